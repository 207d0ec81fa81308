/**
 * The flood limits' stores, one suite per interface, each run on every backend (memory, one
 * Redis, a Redis Cluster; unique key prefix): SocketLeases (the per-user socket cap,
 * socket-leases.memory.ts and socket-leases.redis.ts) and RateLimits (the per-user write and
 * connection limits and the per-address limit: rate-limiter-flexible's memory and Redis
 * limiters). On a shared backend two nodes count together; on memory each node counts its own,
 * and so does every node once its backend is gone.
 */
import { randomBytes } from "node:crypto";
import { afterAll, describe, expect, test } from "vitest";
import type { RedisClient } from "../../server/src/redis/client.js";
import { type RateLimitConfig, RateLimits } from "../../server/src/services/rate-limits.js";
import { createSocketLeases } from "../../server/src/services/socket-leases.js";
import type { RedisSocketLeases } from "../../server/src/services/socket-leases.redis.js";
import { type StoreBackend, stopBackends, storeBackends } from "../helpers/backends.js";
import { eventually } from "../helpers/server.js";

const prefix = `test-rl-${randomBytes(4).toString("hex")}`;
const clients: RedisClient[] = [];
afterAll(async () => {
  for (const c of clients) c.disconnect();
  await stopBackends();
});

const config: RateLimitConfig = {
  messagesPerWindow: 3,
  chatCreatesPerMinute: 100,
  chatEditsPerMinute: 100,
  messageWindowSeconds: 60,
  connectionsPerMinute: 1000,
  maxSocketsPerUser: 2,
  connectionsPerAddressPerMinute: 1000,
  commandsPerSecond: 100,
  commandBurst: 100,
};

const id = (s: string) => `${s}_${randomBytes(4).toString("hex")}`;

/** The backend's client for one test (none for memory), closed after the file. */
async function clientOf(backend: StoreBackend): Promise<RedisClient | undefined> {
  const c = await backend.client();
  if (c) clients.push(c);
  return c;
}

/** Closes the client and waits until it says so: from then on its stores cannot reach it. */
async function lose(client: RedisClient | undefined): Promise<void> {
  if (!client) return;
  client.disconnect();
  // A cluster client stays "close"; one Redis goes on to "end". Neither reconnects.
  await eventually(() => expect(["close", "end"]).toContain(client.status), 5000);
}

describe.each(storeBackends)("$name socket leases", (backend) => {
  test("the cap holds across nodes, a release frees a slot, a renewal keeps them", async () => {
    const redis = await clientOf(backend);
    const [a, b] = [createSocketLeases(2, redis, prefix), createSocketLeases(2, redis, prefix)];
    const user = id("user");
    expect(a.reserve(user, "s1") && (await a.confirm(user, "s1"))).toBe(true);
    expect(b.reserve(user, "s2") && (await b.confirm(user, "s2"))).toBe(true);
    // A third socket: refused across nodes on a shared backend; memory counts per node.
    const third = b.reserve(user, "s3") && (await b.confirm(user, "s3"));
    expect(third).toBe(!backend.shared);
    if (third) b.release(user, "s3");
    a.release(user, "s1");
    expect(b.reserve(user, "s4") && (await b.confirm(user, "s4"))).toBe(true);
    expect(b.usersWithSockets()).toBe(1);
    if (redis) {
      // A renewal moves the node's leases forward (here from an expiry long past).
      // Two users' keys: two hash slots on a cluster, where one pipeline may not hold both.
      const other = id("user");
      expect(b.reserve(other, "o1") && (await b.confirm(other, "o1"))).toBe(true);
      const keys = [`${prefix}:sockets:${user}`, `${prefix}:sockets:${other}`];
      await redis.zadd(keys[0] as string, "XX", 1, "s2");
      await redis.zadd(keys[1] as string, "XX", 1, "o1");
      await (b as RedisSocketLeases).renew();
      expect(Number(await redis.zscore(keys[0] as string, "s2"))).toBeGreaterThan(Date.now());
      expect(Number(await redis.zscore(keys[1] as string, "o1"))).toBeGreaterThan(Date.now());
      b.release(other, "o1");
    }
    expect(a.reserve(user, "s5") && (await a.confirm(user, "s5"))).toBe(!backend.shared);
    a.close();
    b.close();
  });

  test("a node's own count is synchronous: concurrent handshakes cannot pass the cap", async () => {
    const redis = await clientOf(backend);
    const leases = createSocketLeases(2, redis, prefix);
    const user = id("user");
    // Three reserves before any confirm has answered: the third is refused at once.
    const reserved = ["c1", "c2", "c3"].map((s) => leases.reserve(user, s));
    expect(reserved).toEqual([true, true, false]);
    expect(await Promise.all(["c1", "c2"].map((s) => leases.confirm(user, s)))).toEqual([
      true,
      true,
    ]);
    // The last socket's release removes the user's entry.
    leases.release(user, "c1");
    expect(leases.usersWithSockets()).toBe(1);
    leases.release(user, "c2");
    expect(leases.usersWithSockets()).toBe(0);
    leases.close();
  });

  test("a node that died without releasing holds its slots only until its leases lapse", async () => {
    const redis = await clientOf(backend);
    const [dead, alive] = [
      createSocketLeases(2, redis, prefix),
      createSocketLeases(2, redis, prefix),
    ];
    const user = id("user");
    for (const s of ["d1", "d2"])
      expect(dead.reserve(user, s) && (await dead.confirm(user, s))).toBe(true);
    dead.close(); // it stops renewing, and never releases
    expect(alive.reserve(user, "a1") && (await alive.confirm(user, "a1"))).toBe(!backend.shared);
    if (redis) {
      // Its leases lapse (their expiry moved to the past, as LEASE_MS without a renewal does).
      for (const s of ["d1", "d2"]) await redis.zadd(`${prefix}:sockets:${user}`, "XX", 1, s);
      expect(alive.reserve(user, "a2") && (await alive.confirm(user, "a2"))).toBe(true);
    }
    alive.close();
  });

  test("without its backend a node counts its own sockets only", async () => {
    const redis = await clientOf(backend);
    const [a, b] = [createSocketLeases(2, redis, prefix), createSocketLeases(2, redis, prefix)];
    const user = id("user");
    expect(a.reserve(user, "x1") && (await a.confirm(user, "x1"))).toBe(true);
    await lose(redis);
    // Each node admits up to the cap by itself, and no further.
    for (const s of ["y1", "y2"])
      expect(b.reserve(user, s) && (await b.confirm(user, s))).toBe(true);
    expect(b.reserve(user, "y3")).toBe(false);
    expect(a.reserve(user, "x2") && (await a.confirm(user, "x2"))).toBe(true);
    expect(a.reserve(user, "x3")).toBe(false);
    a.close();
    b.close();
  });
});

describe.each(storeBackends)("$name rate limits", (backend) => {
  /** Two nodes' limits on this backend. */
  async function twoNodes(overrides: Partial<RateLimitConfig> = {}) {
    const redis = await clientOf(backend);
    const c = { ...config, ...overrides };
    return {
      redis,
      nodes: [new RateLimits(c, redis, prefix), new RateLimits(c, redis, prefix)] as const,
    };
  }

  test("write limits count a user's writes on every node of a shared backend", async () => {
    const { nodes } = await twoNodes();
    const user = { userId: id("user"), subscriptionTier: null };
    await nodes[0].consumeWrite(user, "message");
    await nodes[1].consumeWrite(user, "message");
    await nodes[0].consumeWrite(user, "message");
    // The fourth message: over the limit (3) on a shared backend; memory: node 2 has seen one.
    const fourth = nodes[1].consumeWrite(user, "message");
    if (backend.shared) await expect(fourth).rejects.toMatchObject({ code: "RATE_LIMITED" });
    else await expect(fourth).resolves.toBeUndefined();
    // Node 1 has seen two: its third is allowed only on memory, its fourth never.
    if (!backend.shared) await nodes[0].consumeWrite(user, "message");
    await expect(nodes[0].consumeWrite(user, "message")).rejects.toMatchObject({
      code: "RATE_LIMITED",
      extra: { retryAfterMs: expect.any(Number) },
    });
    for (const n of nodes) n.close();
  });

  test("each kind of write and each tier has its own count", async () => {
    const { nodes } = await twoNodes({ chatCreatesPerMinute: 1, chatEditsPerMinute: 1 });
    const [node] = nodes;
    const free = { userId: id("user"), subscriptionTier: null };
    await node.consumeWrite(free, "chatCreate");
    await expect(node.consumeWrite(free, "chatCreate")).rejects.toMatchObject({
      code: "RATE_LIMITED",
      message: "Too many chats created; slow down",
    });
    // Edits and messages are counted apart from creates.
    await node.consumeWrite(free, "chatEdit");
    await expect(node.consumeWrite(free, "chatEdit")).rejects.toMatchObject({
      code: "RATE_LIMITED",
      message: "Too many chat renames or deletes; slow down",
    });
    for (let i = 0; i < 3; i++) await node.consumeWrite(free, "message");
    await expect(node.consumeWrite(free, "message")).rejects.toMatchObject({
      message: "Too many messages; slow down",
    });
    // A pro user may send four times the free limit, counted on both nodes when shared.
    const pro = { userId: id("user"), subscriptionTier: "Pro " };
    for (let i = 0; i < 12; i++) await nodes[i % 2 === 0 ? 0 : 1].consumeWrite(pro, "message");
    const thirteenth = nodes[0].consumeWrite(pro, "message");
    if (backend.shared) await expect(thirteenth).rejects.toMatchObject({ code: "RATE_LIMITED" });
    else await expect(thirteenth).resolves.toBeUndefined();
    for (const n of nodes) n.close();
  });

  test("the per-user socket cap and connection attempts through acquireConnection", async () => {
    const { nodes } = await twoNodes({ connectionsPerMinute: 3, maxSocketsPerUser: 2 });
    const user = id("user");
    expect(await nodes[0].acquireConnection(user, "a")).toBe(0);
    expect(await nodes[1].acquireConnection(user, "b")).toBe(0);
    // A third socket: over the cap across nodes on a shared backend.
    const third = await nodes[1].acquireConnection(user, "c");
    if (backend.shared) expect(third).toBeGreaterThan(0);
    else expect(third).toBe(0);
    expect(nodes[1].memoryUse().usersWithSockets).toBe(1);
    nodes[0].release(user, "a");
    nodes[1].release(user, "b");
    nodes[1].release(user, "c");
    // Three attempts were counted (shared: on both nodes together); the next one is refused
    // with the time to wait, and the slot it reserved is given back.
    if (!backend.shared) {
      expect(await nodes[1].acquireConnection(user, "d")).toBe(0);
      nodes[1].release(user, "d");
    }
    const refusedFor = await nodes[1].acquireConnection(user, "e");
    expect(refusedFor).toBeGreaterThan(5000); // the window's wait, not a refused slot (1000, 5000)
    expect(refusedFor).toBeLessThanOrEqual(60_000);
    expect(nodes[1].memoryUse().usersWithSockets).toBe(0);
    for (const n of nodes) n.close();
  });

  test("connection attempts per address: counted on every node, refused until the window ends", async () => {
    const { redis, nodes } = await twoNodes({
      connectionsPerAddressPerMinute: 2,
      addressWindowSeconds: 1,
    });
    const address = `203.0.113.${Math.floor(Math.random() * 250)}:${id("a")}`;
    expect(await nodes[0].consumeAddress(address)).toBe(0);
    expect(await nodes[1].consumeAddress(address)).toBe(0);
    const third = await nodes[1].consumeAddress(address);
    if (backend.shared) {
      expect(third).toBeGreaterThan(0);
      expect(third).toBeLessThanOrEqual(1000);
      // A refused address is refused from this node's memory until its window ends, without
      // asking Redis again (the count is gone from Redis here, and still it is refused).
      const key = `${prefix}:rl:ip:${address}`;
      expect(await redis?.exists(key)).toBe(1);
      await redis?.del(key);
      expect(await nodes[1].consumeAddress(address)).toBeGreaterThan(0);
      // The other node asks Redis, which starts counting again.
      expect(await nodes[0].consumeAddress(address)).toBe(0);
    } else {
      expect(third).toBe(0);
      expect(await nodes[1].consumeAddress(address)).toBeGreaterThan(0);
    }
    // The window (1 s) ends: allowed again, on both nodes.
    await new Promise((r) => setTimeout(r, 1100));
    expect(await nodes[1].consumeAddress(address)).toBe(0);
    expect(await nodes[0].consumeAddress(address)).toBe(0);
    for (const n of nodes) n.close();
  });

  test("without its backend each node counts on its own", async () => {
    const { redis, nodes } = await twoNodes();
    const user = { userId: id("user"), subscriptionTier: null };
    await nodes[0].consumeWrite(user, "message");
    await lose(redis);
    // Node 1 counted one before (in Redis, now out of reach, or in its memory): from here each
    // node counts alone, up to the limit (3) and no further.
    const left = backend.shared ? [3, 3] : [2, 3];
    for (const [i, node] of nodes.entries()) {
      for (let n = 0; n < (left[i] as number); n++) await node.consumeWrite(user, "message");
      await expect(node.consumeWrite(user, "message")).rejects.toMatchObject({
        code: "RATE_LIMITED",
      });
    }
    for (const n of nodes) n.close();
  });
});

/**
 * The flood limits' stores, one suite for every backend (memory, one Redis, a Redis Cluster;
 * unique key prefix): socket leases (the per-user socket cap) and the per-user write limits.
 * On a shared backend two nodes count together; on memory each node counts its own.
 */
import { randomBytes } from "node:crypto";
import { afterAll, describe, expect, test } from "vitest";
import type { RedisClient } from "../../server/src/redis/client.js";
import { type RateLimitConfig, RateLimits } from "../../server/src/services/rate-limits.js";
import { createSocketLeases } from "../../server/src/services/socket-leases.js";
import type { RedisSocketLeases } from "../../server/src/services/socket-leases.redis.js";
import { stopBackends, storeBackends } from "../helpers/backends.js";

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

describe.each(storeBackends)("$name flood limits", (backend) => {
  async function client() {
    const c = await backend.client();
    if (c) clients.push(c);
    return c;
  }
  const id = (s: string) => `${s}_${randomBytes(4).toString("hex")}`;

  test("socket leases: the cap holds, a release frees a slot, a renewal keeps them", async () => {
    const redis = await client();
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

  test("write limits count a user's writes on every node of a shared backend", async () => {
    const redis = await client();
    const nodes = [new RateLimits(config, redis, prefix), new RateLimits(config, redis, prefix)];
    const user = { userId: id("user"), subscriptionTier: null };
    await nodes[0]?.consumeWrite(user, "message");
    await nodes[1]?.consumeWrite(user, "message");
    await nodes[0]?.consumeWrite(user, "message");
    // The fourth message: over the limit (3) on a shared backend; memory: node 2 has seen one.
    const fourth = nodes[1]?.consumeWrite(user, "message");
    if (backend.shared) await expect(fourth).rejects.toMatchObject({ code: "RATE_LIMITED" });
    else await expect(fourth).resolves.toBeUndefined();
    // Node 1 has seen two: its third is allowed only on memory, its fourth never.
    if (!backend.shared) await nodes[0]?.consumeWrite(user, "message");
    await expect(nodes[0]?.consumeWrite(user, "message")).rejects.toMatchObject({
      code: "RATE_LIMITED",
      extra: { retryAfterMs: expect.any(Number) },
    });
    for (const n of nodes) n.close();
  });

  test("the per-user socket cap through RateLimits.acquireConnection", async () => {
    const redis = await client();
    const nodes = [new RateLimits(config, redis, prefix), new RateLimits(config, redis, prefix)];
    const user = id("user");
    expect(await nodes[0]?.acquireConnection(user, "a")).toBe(0);
    expect(await nodes[1]?.acquireConnection(user, "b")).toBe(0);
    const third = await nodes[1]?.acquireConnection(user, "c");
    if (backend.shared) expect(third).toBeGreaterThan(0);
    else expect(third).toBe(0);
    expect(nodes[1]?.memoryUse().usersWithSockets).toBe(1);
    for (const n of nodes) n.close();
  });
});

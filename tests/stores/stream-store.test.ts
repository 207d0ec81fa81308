/**
 * The stream store's contract, one suite for every implementation and backend (memory, one
 * Redis, one Redis with the cluster's hash-slot groups, a real Redis Cluster; each Redis one
 * with a unique key prefix): the per-chat index of open streams follows every transition, the
 * generating state of many chats comes in one call, a stop and a finish cannot both win, and
 * the sweep fails overdue open streams but hands overdue stopping ones back with a new lease.
 */
import { randomBytes } from "node:crypto";
import { afterAll, describe, expect, test } from "vitest";
import type { RedisClient } from "../../server/src/redis/client.js";
import { MemoryStreamStore } from "../../server/src/repositories/stream.memory.js";
import { RedisStreamStore, STREAM_SHARDS } from "../../server/src/repositories/stream.redis.js";
import type { StreamRecord, StreamStore } from "../../server/src/repositories/stream.repository.js";
import { stopBackends, storeBackends, testCluster } from "../helpers/backends.js";

const prefix = `test-store-${randomBytes(4).toString("hex")}`;
const clients: RedisClient[] = [];
afterAll(async () => {
  for (const c of clients) {
    if (!("isCluster" in c && c.isCluster)) {
      const keys = await c.keys(`${prefix}:*`);
      if (keys.length > 0) await c.del(...keys);
    }
    c.disconnect();
  }
  await stopBackends();
});

const TTL = 60_000;
const failure = { reason: "ABANDONED", message: "gone" };

function record(chatId: string, streamId: string, startedAt: number): StreamRecord {
  return {
    streamId,
    userId: "user_x",
    dbUserId: "00000000-0000-4000-8000-000000000001",
    chatId,
    role: "assistant",
    status: "active",
    nextIndex: 0,
    length: 0,
    content: "",
    startedAt,
    deadline: startedAt + 1000,
    failureReason: null,
    failureMessage: null,
    finishContent: null,
  };
}

/** Every backend, plus one Redis laid out in the cluster's hash-slot groups. */
const stores: { name: string; make: () => Promise<StreamStore> }[] = [
  ...storeBackends.map((backend) => ({
    name: backend.name,
    make: async () => {
      const client = await backend.client();
      if (!client) return new MemoryStreamStore();
      clients.push(client);
      return new RedisStreamStore(client, prefix);
    },
  })),
  {
    name: "redis (4 hash-slot groups)",
    make: async () => {
      const client = await storeBackends[1]!.client();
      if (!client) throw new Error("no redis");
      clients.push(client);
      return new RedisStreamStore(client, `${prefix}:g`, { shards: 4 });
    },
  },
];

describe.each(stores)("$name stream store", ({ name, make }) => {
  const id = (s: string) => `${name.replace(/\W+/g, "-")}-${s}-${randomBytes(3).toString("hex")}`;

  test("the chat index holds the open streams, oldest first, and drops them when they end", async () => {
    const store = await make();
    const chat = id("chat");
    const other = id("other");
    const now = Date.now();
    const [a, b, c] = [id("a"), id("b"), id("c")];
    await store.create(record(chat, a, now), TTL);
    await store.create(record(chat, b, now + 5), TTL);
    await store.create(record(other, c, now + 10), TTL);
    await store.append(a, 0, ["Hel", "lo"], { maxLength: 100, deadline: now + 1000, ttlMs: TTL });

    const open = await store.openStreams(chat);
    expect(open.map((r) => [r.streamId, r.content, r.nextIndex])).toEqual([
      [a, "Hello", 2],
      [b, "", 0],
    ]);
    const gen = await store.generating([chat, other, id("empty")]);
    expect([...gen]).toEqual([
      [chat, { streamId: b, startedAt: now + 5 }],
      [other, { streamId: c, startedAt: now + 10 }],
    ]);

    // finishing keeps it open; finished, stopping and failed end it.
    await store.transition(a, "active", "finishing", { ttlMs: TTL, deadline: now + 2000 });
    expect((await store.openStreams(chat)).map((r) => r.streamId)).toEqual([a, b]);
    await store.transition(a, "finishing", "finished", { ttlMs: TTL });
    await store.transition(b, "active", "stopping", { ttlMs: TTL, deadline: now + 2000 });
    expect(await store.openStreams(chat)).toEqual([]);
    expect((await store.generating([chat])).size).toBe(0);
    // A finish that went back to active (a transient failure) is open again.
    await store.transition(c, "active", "finishing", { ttlMs: TTL, deadline: now + 2000 });
    await store.transition(c, "finishing", "active", { ttlMs: TTL, deadline: now + 2000 });
    expect((await store.openStreams(other)).map((r) => r.streamId)).toEqual([c]);
  });

  test("a stop and a finish racing: exactly one transition wins", async () => {
    const store = await make();
    const chat = id("chat");
    for (let i = 0; i < 20; i++) {
      const s = id(`race${i}`);
      await store.create(record(chat, s, Date.now()), TTL);
      const results = await Promise.all([
        store.transition(s, "active", "stopping", { ttlMs: TTL, deadline: Date.now() + 1000 }),
        store.transition(s, "active", "finishing", { ttlMs: TTL, deadline: Date.now() + 1000 }),
      ]);
      expect(results.filter((r) => r.ok)).toHaveLength(1);
      // A chunk after either is refused with the status.
      const late = await store.append(s, 0, ["x"], {
        maxLength: 10,
        deadline: Date.now() + 1000,
        ttlMs: TTL,
      });
      expect(late.kind).toBe("status");
    }
  });

  test("the sweep fails overdue open streams and re-leases overdue stopping ones", async () => {
    const store = await make();
    const chat = id("chat");
    const now = Date.now();
    const [open, stopping, fresh] = [id("open"), id("stopping"), id("fresh")];
    await store.create(record(chat, open, now - 5000), TTL);
    await store.create(record(chat, stopping, now - 5000), TTL);
    await store.create({ ...record(chat, fresh, now), deadline: now + 60_000 }, TTL);
    await store.append(stopping, 0, ["partial"], {
      maxLength: 100,
      deadline: now - 100,
      ttlMs: TTL,
    });
    await store.transition(stopping, "active", "stopping", { ttlMs: TTL, deadline: now - 50 });

    const swept = await store.expire(now, 100, TTL, failure, now + 10_000);
    const mine = swept.filter((r) => r.chatId === chat);
    expect(mine.map((r) => [r.streamId, r.status]).sort()).toEqual(
      [
        [open, "failed"],
        [stopping, "stopping"],
      ].sort(),
    );
    expect(mine.find((r) => r.streamId === stopping)).toMatchObject({
      content: "partial",
      deadline: now + 10_000,
    });
    // Handed to one sweeper only: within its new lease nobody else gets it.
    const again = await store.expire(now + 1, 100, TTL, failure, now + 20_000);
    expect(again.filter((r) => r.chatId === chat)).toEqual([]);
    expect((await store.openStreams(chat)).map((r) => r.streamId)).toEqual([fresh]);
    expect(await store.get(open)).toMatchObject({ status: "failed", failureReason: "ABANDONED" });
  });

  test("an overdue finishing stream is re-leased to one sweeper with the finish's content", async () => {
    const store = await make();
    const chat = id("chat");
    const now = Date.now();
    const [over, plain] = [id("override"), id("plain")];
    await store.create(record(chat, over, now - 5000), TTL);
    await store.create(record(chat, plain, now - 5000), TTL);
    for (const s of [over, plain]) {
      await store.append(s, 0, ["chunks"], { maxLength: 100, deadline: now - 100, ttlMs: TTL });
    }
    await store.transition(over, "active", "finishing", {
      ttlMs: TTL,
      deadline: now - 50,
      finishContent: "the final text",
    });
    await store.transition(plain, "active", "finishing", {
      ttlMs: TTL,
      deadline: now - 50,
      finishContent: null,
    });

    const swept = await store.expire(now, 100, TTL, failure, now + 10_000);
    const mine = swept.filter((r) => r.chatId === chat);
    expect(mine.map((r) => [r.streamId, r.status, r.content, r.finishContent]).sort()).toEqual(
      [
        [over, "finishing", "chunks", "the final text"],
        [plain, "finishing", "chunks", null],
      ].sort(),
    );
    expect(mine.every((r) => r.deadline === now + 10_000)).toBe(true);
    // Still open (being finished), and handed to one sweeper only within the new lease.
    expect((await store.openStreams(chat)).map((r) => r.streamId).sort()).toEqual(
      [over, plain].sort(),
    );
    const again = await store.expire(now + 1, 100, TTL, failure, now + 20_000);
    expect(again.filter((r) => r.chatId === chat)).toEqual([]);
    // Going back to active clears the override; the chunks are untouched.
    await store.transition(over, "finishing", "active", {
      ttlMs: TTL,
      deadline: now + 60_000,
      finishContent: null,
    });
    expect(await store.get(over)).toMatchObject({
      status: "active",
      content: "chunks",
      finishContent: null,
    });
  });
});

test("on a Redis Cluster the stream deadlines are spread over every master", async () => {
  const cluster = await testCluster();
  const masters = new Set<number>();
  for (let i = 0; i < STREAM_SHARDS; i++) {
    masters.add(await cluster.masterOf(`${prefix}:{streams:${i}}:streams:deadlines`));
  }
  expect(masters.size).toBe(3);
});

/**
 * Streamed replies across nodes and through faults: a stop on one node of a stream fed through
 * another; a node that goes away mid-stream (another node carries on, or abandons the stream);
 * a node that died in the middle of a stop (the sweeper of another node stores the partial
 * reply) or of a finish (it stores the reply the finish asked for, once); Redis restarting mid-stream with its data lost (documented outcome: 503 while it is
 * down, then 404, and the backend posts the reply whole with clientId = streamId).
 */
import { randomBytes } from "node:crypto";
import { Redis } from "ioredis";
import type postgres from "postgres";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import type {
  ChatGenerating,
  ChatMessage,
  MessageDelta,
  MessageStreamFailed,
} from "../../protocol/index.js";
import { RedisStreamStore } from "../../server/src/repositories/stream.redis.js";
import { rooms } from "../../server/src/socket/types.js";
import { freePort, RedisProcess } from "../helpers/redis-process.js";
import {
  eventually,
  recordEvents,
  startTestServer,
  type TestServer,
  testRedisUrl,
} from "../helpers/server.js";
import { nextEvent, ok, openSql, userId } from "../realtime/support.js";
import { chatOpenOn, errorOf, newServiceKey, serviceClient, streamedText } from "./support.js";

const KEY = newServiceKey();

async function cleanRedis(prefix: string) {
  const redis = new Redis(testRedisUrl, { maxRetriesPerRequest: 1 });
  try {
    const keys = await redis.keys(`${prefix}:*`);
    if (keys.length > 0) await redis.del(...keys);
  } finally {
    redis.disconnect();
  }
}

async function started(api: ReturnType<typeof serviceClient>, uid: string, chatId: string) {
  const res = await api.post<{ stream: { streamId: string } }>(
    `/users/${uid}/chats/${chatId}/streams`,
    {},
  );
  expect(res.status).toBe(201);
  return res.body.stream.streamId;
}

describe("two nodes over Redis", () => {
  const prefix = `test-sc-${randomBytes(4).toString("hex")}`;
  let owner: TestServer;
  let other: TestServer;
  let sql: postgres.Sql;

  beforeAll(async () => {
    const common = { redisUrl: testRedisUrl, redisKeyPrefix: prefix, serviceApiKey: KEY };
    // Short stream timeout, so abandonment happens within the test.
    owner = await startTestServer({ ...common, streamTimeoutMs: 800 });
    other = await startTestServer({
      ...common,
      streamTimeoutMs: 800,
      databaseUrl: owner.databaseUrl,
    });
    sql = openSql(owner.databaseUrl);
  });
  afterAll(async () => {
    await sql?.end({ timeout: 5 });
    await other?.close();
    await owner?.close();
    await cleanRedis(prefix);
  });

  async function clusterSees(room: string, n: number) {
    await eventually(async () => {
      expect(await owner.app.io.in(room).fetchSockets()).toHaveLength(n);
    });
  }

  test("a stop on node B of a stream fed through node A reaches both nodes and the backend", async () => {
    const uid = userId("sc_stop");
    const d1 = await owner.connectAs(uid);
    const d2 = await other.connectAs(uid);
    const chatId = await chatOpenOn(d1, [d1, d2]);
    await clusterSees(rooms.chat(chatId), 2);
    const apiA = serviceClient(owner.url, KEY);
    const streamId = await started(apiA, uid, chatId);
    for (const [i, w] of ["Pa", "rt", "ial"].entries()) {
      expect((await apiA.post(`/streams/${streamId}/chunks`, { index: i, delta: w })).status).toBe(
        200,
      );
    }
    const seenOnA = nextEvent(d1, "message:stopped");
    const createdOnA = nextEvent(d1, "message:created");
    const ack = await ok(d2, "message:stop", { chatId, streamId });
    expect(ack).toMatchObject({
      status: "stopped",
      message: { content: "Partial", stopped: true },
    });
    expect((await seenOnA).streamId).toBe(streamId);
    expect((await createdOnA).message).toEqual(ack.message);
    const late = await apiA.post(`/streams/${streamId}/chunks`, { index: 3, delta: "ly" });
    expect(late.status).toBe(409);
    expect(errorOf(late).code).toBe("STREAM_STOPPED");
    const rows = await sql`select 1 from chat_memory where session_id = ${chatId}`;
    expect(rows).toHaveLength(1);
  });

  test("a node that died in the middle of a stop: another node's sweeper stores the partial reply", async () => {
    const uid = userId("sc_halfstop");
    const d = await other.connectAs(uid);
    const chatId = await chatOpenOn(d, [d]);
    const rec = recordEvents(d);
    const api = serviceClient(other.url, KEY);
    const streamId = await started(api, uid, chatId);
    expect(
      (await api.post(`/streams/${streamId}/chunks`, { index: 0, delta: "So far" })).status,
    ).toBe(200);
    // What a node leaves behind when it dies right after claiming the stop: `stopping`, its
    // reply not stored (the same state as a stop whose database write failed).
    const redis = new Redis(testRedisUrl, { maxRetriesPerRequest: 1 });
    try {
      const store = new RedisStreamStore(redis, prefix);
      const claimed = await store.transition(streamId, "active", "stopping", {
        deadline: Date.now() + 200,
        ttlMs: 60_000,
      });
      expect(claimed.ok).toBe(true);
    } finally {
      redis.disconnect();
    }
    expect((await api.post(`/streams/${streamId}/chunks`, { index: 1, delta: "x" })).status).toBe(
      409,
    );
    // The sweepers (every 200 ms here) take it over once the lease has passed.
    await eventually(() => {
      const created = rec.of<{ message: ChatMessage }>("message:created");
      expect(created.map((e) => e.message)).toEqual([
        expect.objectContaining({ clientId: streamId, content: "So far", stopped: true }),
      ]);
      expect(rec.of("message:stopped")).not.toHaveLength(0);
    }, 10_000);
    const view = await api.get<{ stream: { status: string } }>(`/streams/${streamId}`);
    expect(view.body.stream.status).toBe("stopped");
    expect(await sql`select 1 from chat_memory where session_id = ${chatId}`).toHaveLength(1);
  });

  test("a node that died while storing a finish: another node's sweeper stores the reply once, the retried finish is a duplicate", async () => {
    const uid = userId("sc_halffinish");
    const d1 = await owner.connectAs(uid);
    const d2 = await other.connectAs(uid);
    const chatId = await chatOpenOn(d1, [d1, d2]);
    await clusterSees(rooms.chat(chatId), 2);
    const recs = [recordEvents(d1), recordEvents(d2)];
    const api = serviceClient(owner.url, KEY);
    const retryApi = serviceClient(other.url, KEY);
    const [plain, over] = [await started(api, uid, chatId), await started(api, uid, chatId)];
    for (const s of [plain, over]) {
      for (const [i, w] of ["So ", "far"].entries()) {
        expect((await api.post(`/streams/${s}/chunks`, { index: i, delta: w })).status).toBe(200);
      }
    }
    // What a node leaves behind when it dies right after claiming a finish: `finishing` (with
    // the finish's content, when it gave one), the reply not stored.
    const redis = new Redis(testRedisUrl, { maxRetriesPerRequest: 1 });
    try {
      const store = new RedisStreamStore(redis, prefix);
      for (const [s, finishContent] of [
        [plain, null],
        [over, "The whole reply"],
      ] as const) {
        const claimed = await store.transition(s, "active", "finishing", {
          deadline: Date.now() + 300,
          ttlMs: 60_000,
          finishContent,
        });
        expect(claimed.ok).toBe(true);
      }
    } finally {
      redis.disconnect();
    }
    // The backend retries its finish on the other node: it waits for the finish in progress,
    // which the sweepers (every 200 ms here) complete once the lease has passed.
    const [a, b] = await Promise.all([
      retryApi.post<{ message: ChatMessage; duplicate: boolean }>(`/streams/${plain}/finish`, {}),
      retryApi.post<{ message: ChatMessage; duplicate: boolean }>(`/streams/${over}/finish`, {
        content: "The whole reply",
      }),
    ]);
    expect([a.status, b.status], JSON.stringify([a.body, b.body])).toEqual([200, 200]);
    expect(a.body).toMatchObject({
      duplicate: true,
      message: { clientId: plain, content: "So far" },
    });
    expect(b.body).toMatchObject({
      duplicate: true,
      message: { clientId: over, content: "The whole reply" },
    });
    for (const rec of recs) {
      await eventually(() => {
        const created = rec.of<{ message: ChatMessage }>("message:created").map((e) => e.message);
        expect(created.map((m) => [m.clientId, m.content]).sort()).toEqual(
          [
            [over, "The whole reply"],
            [plain, "So far"],
          ].sort(),
        );
      }, 10_000);
      expect(rec.of("message:failed")).toEqual([]);
    }
    const again = await api.post<{ duplicate: boolean }>(`/streams/${plain}/finish`, {});
    expect(again.status).toBe(200);
    expect(again.body.duplicate).toBe(true);
    const rows = await sql<{ client_id: string }[]>`
      select client_id from chat_memory where session_id = ${chatId}`;
    expect(rows.map((r) => r.client_id).sort()).toEqual([over, plain].sort());
  });

  test("a node that goes away mid-stream: the other node carries on, or abandons the stream", async () => {
    const uid = userId("sc_gone");
    const third = await startTestServer({
      redisUrl: testRedisUrl,
      redisKeyPrefix: prefix,
      serviceApiKey: KEY,
      streamTimeoutMs: 800,
      databaseUrl: owner.databaseUrl,
    });
    const d = await other.connectAs(uid);
    const side = recordEvents(d);
    const chatId = await chatOpenOn(d, [d]);
    const rec = recordEvents(d);
    const api3 = serviceClient(third.url, KEY);
    const carried = await started(api3, uid, chatId);
    const dropped = await started(api3, uid, chatId);
    for (const id of [carried, dropped]) {
      expect((await api3.post(`/streams/${id}/chunks`, { index: 0, delta: "Begun " })).status).toBe(
        200,
      );
    }
    await third.close();

    // The backend retries its calls on another node: the stream goes on and is stored.
    const api = serviceClient(other.url, KEY);
    expect(
      (await api.post(`/streams/${carried}/chunks`, { index: 1, delta: "and ended." })).status,
    ).toBe(200);
    const done = await api.post<{ message: ChatMessage }>(`/streams/${carried}/finish`, {});
    expect(done.status).toBe(201);
    expect(done.body.message.content).toBe("Begun and ended.");
    // The other one is never heard of again: a remaining node abandons it.
    await eventually(() => {
      expect(rec.of<MessageStreamFailed>("message:failed")).toEqual([
        { streamId: dropped, chatId, reason: "ABANDONED", message: expect.any(String) },
      ]);
    }, 10_000);
    const deltas = rec.of<MessageDelta>("message:delta").filter((e) => e.streamId === carried);
    expect(streamedText(deltas)).toBe("Begun and ended.");
    const ends = side
      .of<ChatGenerating>("chat:generating")
      .filter((e) => !e.active)
      .map((e) => e.streamId);
    expect(ends.sort()).toEqual([carried, dropped].sort());
    expect(
      (await ok(d, "chat:list", {})).chats.find((c) => c.id === chatId)?.generating,
    ).toBeNull();
  });
});

const redisPort = await freePort();

describe("Redis restarting mid-stream (its data lost)", () => {
  const redis = new RedisProcess(redisPort);
  let node: TestServer;

  beforeAll(async () => {
    await redis.start();
    node = await startTestServer({
      redisUrl: redis.url,
      redisKeyPrefix: "fault",
      serviceApiKey: KEY,
    });
  });
  afterAll(async () => {
    await node?.close();
    await redis.kill();
  });

  test("503 while Redis is down, 404 after it came back empty; the reply posted whole replaces the stream", async () => {
    const uid = userId("sc_redis");
    const d = await node.connectAs(uid);
    const chatId = await chatOpenOn(d, [d]);
    const api = serviceClient(node.url, KEY);
    const streamId = await started(api, uid, chatId);
    expect(
      (await api.post(`/streams/${streamId}/chunks`, { index: 0, delta: "Hello" })).status,
    ).toBe(200);
    await redis.kill();
    const down = await api.post(`/streams/${streamId}/chunks`, { index: 1, delta: " there" });
    expect(down.status).toBe(503);
    expect(errorOf(down).code).toBe("UNAVAILABLE");
    // A chat still opens meanwhile (without its stream).
    expect((await ok(d, "chat:open", { chatId })).streams).toEqual([]);

    await redis.start();
    const after = await eventually(async () => {
      const r = await api.post(`/streams/${streamId}/chunks`, { index: 1, delta: " there" });
      expect(r.status).not.toBe(503);
      return r;
    }, 15_000);
    expect(after.status).toBe(404);
    expect(errorOf(after).code).toBe("NOT_FOUND");
    // What the backend does then (docs/service-api.md): post the reply whole, clientId = streamId.
    const created = nextEvent(d, "message:created");
    const posted = await api.post<{ message: ChatMessage }>(
      `/users/${uid}/chats/${chatId}/messages`,
      {
        clientId: streamId,
        content: "Hello there",
      },
    );
    expect(posted.status).toBe(201);
    expect((await created).message).toMatchObject({ clientId: streamId, content: "Hello there" });
  });
});

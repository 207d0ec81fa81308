/**
 * The assistant loop from outside, as the black box will drive it: two (then three) real
 * server processes in production mode over one Postgres and one Redis, a webhook receiver, and
 * nothing but the documented protocol (docs/protocol.md), service API and webhooks
 * (docs/service-api.md). Payloads are compared with the documented ones field by field.
 */
import { randomBytes, randomUUID } from "node:crypto";
import type postgres from "postgres";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import type { ChatMessage } from "../../protocol/index.js";
import { createTestDatabase, type TestDatabase } from "../helpers/db.js";
import { freePort, RedisProcess } from "../helpers/redis-process.js";
import { type ClientSocket, eventually } from "../helpers/server.js";
import { newSecret, type Receiver, startReceiver } from "../outbox/support.js";
import { ok, openSql, refused, userId } from "../realtime/support.js";
import { errorOf, newServiceKey, serviceClient } from "../service/support.js";
import { device, type NodeProcess, placeByOffset, record, startNode } from "./nodes.js";

const KEY = newServiceKey();
const STOPPED_TEXT =
  "The reply was stopped by the user: stop generating it (the text so far is stored)";
const STREAM_TIMEOUT_MS = 2000;
const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

let tdb: TestDatabase;
let redis: RedisProcess;
let receiver: Receiver;
let env: Record<string, string>;
let a: NodeProcess;
let b: NodeProcess;
let sql: postgres.Sql;
const sockets: ClientSocket[] = [];

async function on(node: NodeProcess, uid: string) {
  const s = await device(node.url, uid);
  sockets.push(s);
  return s;
}

const keys = (o: unknown) => Object.keys(o as object).sort();

async function start(node: NodeProcess, uid: string, chatId: string, streamId?: string) {
  const res = await serviceClient(node.url, KEY).post<{
    stream: Record<string, unknown>;
    created: boolean;
  }>(`/users/${uid}/chats/${chatId}/streams`, streamId ? { streamId } : {});
  expect(res.status).toBe(201);
  return res.body;
}

async function chunk(node: NodeProcess, streamId: string, index: number, delta: string) {
  return serviceClient(node.url, KEY).post<Record<string, unknown>>(`/streams/${streamId}/chunks`, {
    index,
    delta,
  });
}

async function rowsOf(streamId: string) {
  return sql<{ content: string; stopped: boolean }[]>`
    select message->>'content' as content, coalesce((message->>'stopped')::boolean, false) as stopped
    from chat_memory where client_id = ${streamId}`;
}

beforeAll(async () => {
  tdb = await createTestDatabase();
  redis = new RedisProcess(await freePort());
  await redis.start();
  const secret = newSecret();
  receiver = await startReceiver(secret);
  env = {
    REDIS_URL: redis.url,
    REDIS_KEY_PREFIX: `bb${randomBytes(3).toString("hex")}`,
    SERVICE_API_KEY: KEY,
    APP_WEBHOOK_URL: receiver.url,
    APP_WEBHOOK_SECRET: secret,
    SERVICE_STREAM_TIMEOUT_MS: String(STREAM_TIMEOUT_MS),
  };
  a = await startNode(tdb.url, env);
  b = await startNode(tdb.url, env);
  sql = openSql(tdb.url);
}, 120_000);

afterAll(async () => {
  for (const s of sockets) s.disconnect();
  await a?.stop();
  await b?.stop();
  await sql?.end({ timeout: 5 });
  await receiver?.close();
  await redis?.kill();
  await tdb?.drop();
}, 60_000);

describe("the loop across two production nodes", () => {
  test("documented payloads: start, chunks, generating, snapshot, stop from the other node, webhook, 409s", async () => {
    const uid = userId("bb_shapes");
    const d1 = await on(a, uid);
    const d2 = await on(b, uid);
    const side = await on(b, uid); // never opens the chat: the sidebar only
    const r1 = record(d1);
    const r2 = record(d2);
    const rs = record(side);
    const { chat } = await ok(d1, "chat:create", { title: "Shapes" });
    const chatId = chat.id;
    expect(chat.generating).toBeNull();
    await ok(d1, "chat:open", { chatId });
    await ok(d2, "chat:open", { chatId });
    const streamId = `gen-${randomBytes(4).toString("hex")}`;

    const begun = await start(a, uid, chatId, streamId);
    expect(keys(begun)).toEqual(["created", "stream"]);
    expect(begun.created).toBe(true);
    expect(keys(begun.stream)).toEqual(
      [
        "streamId",
        "userId",
        "chatId",
        "role",
        "status",
        "nextIndex",
        "length",
        "startedAt",
        "expiresAt",
        "failure",
      ].sort(),
    );
    expect(begun.stream).toMatchObject({
      streamId,
      userId: uid,
      chatId,
      role: "assistant",
      status: "active",
      nextIndex: 0,
      length: 0,
      failure: null,
    });
    const startedAt = begun.stream.startedAt as string;
    expect(startedAt).toMatch(ISO);
    expect(begun.stream.expiresAt).toMatch(ISO);
    // A retried start: 200, created false.
    const again = await serviceClient(b.url, KEY).post<{ created: boolean }>(
      `/users/${uid}/chats/${chatId}/streams`,
      { streamId, role: "assistant" },
    );
    expect(again.status).toBe(200);
    expect(again.body.created).toBe(false);

    await eventually(() => {
      for (const r of [r1, r2]) {
        expect(r.of("message:streaming")).toEqual([
          { streamId, chatId, role: "assistant", startedAt },
        ]);
      }
      for (const r of [r1, r2, rs]) {
        expect(r.of("chat:generating")).toEqual([{ chatId, streamId, active: true, startedAt }]);
      }
    });
    // The sidebar says so, with the same start, in chat:list and through the service API.
    const listed = (await ok(side, "chat:list", {})).chats.find((c) => c.id === chatId);
    expect(listed?.generating).toEqual({ streamId, startedAt });
    const served = await serviceClient(b.url, KEY).get<{
      chats: { id: string; generating: unknown }[];
    }>(`/users/${uid}/chats`);
    expect(served.body.chats.find((c) => c.id === chatId)?.generating).toEqual({
      streamId,
      startedAt,
    });

    // Chunks: one, a batch, a retried one (skipped), a gap (409 with the expected index).
    const one = await chunk(a, streamId, 0, "Pack light ");
    expect(one.status).toBe(200);
    expect(one.body).toEqual({ streamId, nextIndex: 1, applied: 1 });
    const batch = await serviceClient(b.url, KEY).post(`/streams/${streamId}/chunks`, {
      chunks: [
        { index: 1, delta: "layers and " },
        { index: 2, delta: "a rain" },
      ],
    });
    expect(batch.status).toBe(200);
    expect(batch.body).toEqual({ streamId, nextIndex: 3, applied: 2 });
    const retried = await chunk(a, streamId, 2, "a rain");
    expect(retried.body).toEqual({ streamId, nextIndex: 3, applied: 0 });
    const gap = await chunk(b, streamId, 5, "x");
    expect(gap.status).toBe(409);
    expect(errorOf(gap)).toMatchObject({
      code: "CONFLICT",
      details: [{ path: "index", message: "expected 3" }],
    });

    // A device opening the chat now (a third one, on node A) gets the text so far.
    const late = await on(a, uid);
    const opened = await ok(late, "chat:open", { chatId });
    expect(opened.streams).toEqual([
      {
        streamId,
        chatId,
        role: "assistant",
        startedAt,
        content: "Pack light layers and a rain",
        nextIndex: 3,
      },
    ]);
    expect(opened.chat.generating).toEqual({ streamId, startedAt });

    await eventually(() => {
      for (const r of [r1, r2]) {
        const deltas = r.of<{ offset: number; delta: string }>("message:delta", streamId);
        for (const d of deltas)
          expect(keys(d)).toEqual(["chatId", "delta", "index", "offset", "streamId"]);
        expect(placeByOffset("", deltas)).toBe("Pack light layers and a rain");
      }
    });

    // Stop from the device on node B; the stream was fed through node A.
    const stopped = await ok(d2, "message:stop", { chatId, streamId });
    expect(keys(stopped)).toEqual(["message", "status", "streamId"]);
    expect(stopped.status).toBe("stopped");
    expect(stopped.streamId).toBe(streamId);
    const message = stopped.message as ChatMessage;
    expect(keys(message)).toEqual(
      ["id", "chatId", "seq", "clientId", "role", "content", "createdAt", "stopped"].sort(),
    );
    expect(message).toMatchObject({
      chatId,
      clientId: streamId,
      role: "assistant",
      content: "Pack light layers and a rain",
      stopped: true,
    });
    await eventually(() => {
      for (const r of [r1, r2]) {
        const ends = r.of<{ stoppedAt: string }>("message:stopped", streamId);
        expect(ends.length).toBeGreaterThanOrEqual(1);
        expect(keys(ends[0])).toEqual(["chatId", "stoppedAt", "streamId"]);
        expect(ends[0]?.stoppedAt).toMatch(ISO);
        expect(r.of<{ message: ChatMessage }>("message:created").map((e) => e.message)).toEqual([
          message,
        ]);
      }
      for (const r of [r1, r2, rs]) {
        expect(r.of("chat:generating").at(-1)).toEqual({
          chatId,
          streamId,
          active: false,
          startedAt,
        });
      }
    });
    // The device shows stopped before the stored reply arrives.
    const order = r1.events
      .map((e) => e.name)
      .filter((n) => n === "message:stopped" || n === "message:created");
    expect(order[0]).toBe("message:stopped");

    // The backend is told: the webhook, and 409 STREAM_STOPPED on chunk, finish and fail.
    const told = await eventually(() => {
      const hooks = receiver
        .ofType("stream.stop_requested")
        .filter((d) => d.data.streamId === streamId);
      expect(hooks).toHaveLength(1);
      return hooks[0];
    }, 15_000);
    expect(keys(told?.data)).toEqual(["chatId", "requestedAt", "streamId", "userId"]);
    expect(told?.data).toMatchObject({ userId: uid, chatId, streamId });
    expect(told?.data.requestedAt).toMatch(ISO);
    expect(told?.timestamp).toMatch(ISO);
    for (const [node, path, body] of [
      [a, "chunks", { index: 3, delta: " and boots" }],
      [b, "chunks", { index: 3, delta: " and boots" }],
      [a, "finish", {}],
      [b, "fail", { message: "gave up" }],
    ] as const) {
      const res = await serviceClient(node.url, KEY).post(`/streams/${streamId}/${path}`, body);
      expect(res.status, path).toBe(409);
      expect(res.body).toEqual({ error: { code: "STREAM_STOPPED", message: STOPPED_TEXT } });
    }
    const view = await serviceClient(b.url, KEY).get<{ stream: Record<string, unknown> }>(
      `/streams/${streamId}`,
    );
    expect(view.body.stream).toMatchObject({ status: "stopped", expiresAt: null, nextIndex: 3 });
    // A repeated stop (another device, another node) answers the same.
    const repeat = await ok(d1, "message:stop", { chatId, streamId });
    expect(repeat).toEqual(stopped);
    // Stored once, marked stopped; nothing more reached the devices after the stop.
    expect(await rowsOf(streamId)).toEqual([
      { content: "Pack light layers and a rain", stopped: true },
    ]);
    expect(
      placeByOffset("", r1.of<{ offset: number; delta: string }>("message:delta", streamId)),
    ).toBe("Pack light layers and a rain");
    expect(
      (await ok(side, "chat:list", {})).chats.find((c) => c.id === chatId)?.generating,
    ).toBeNull();
    // A fresh open: the stopped reply is a message, no stream.
    const reopened = await ok(late, "chat:open", { chatId });
    expect(reopened.streams).toEqual([]);
    expect(reopened.messages.at(-1)).toEqual(message);
  });

  test("only the owner stops: another user's stream, or one of another chat, is NOT_FOUND", async () => {
    const owner = userId("bb_owner");
    const intruder = userId("bb_intruder");
    const d = await on(a, owner);
    const x = await on(b, intruder);
    const { chat } = await ok(d, "chat:create", { title: "Mine" });
    const { chat: theirs } = await ok(x, "chat:create", { title: "Theirs" });
    const { chat: other } = await ok(d, "chat:create", { title: "Other" });
    const { stream } = await start(a, owner, chat.id);
    const streamId = stream.streamId as string;
    expect((await chunk(a, streamId, 0, "Secret")).status).toBe(200);
    for (const [s, chatId] of [
      [x, chat.id],
      [x, theirs.id],
      [d, other.id],
    ] as const) {
      const err = await refused(s, "message:stop", { chatId, streamId });
      expect(err.code).toBe("NOT_FOUND");
    }
    expect((await refused(d, "message:stop", { chatId: chat.id, streamId: "no-such" })).code).toBe(
      "NOT_FOUND",
    );
    // Untouched: it goes on and finishes.
    expect((await chunk(b, streamId, 1, " sauce")).status).toBe(200);
    const done = await serviceClient(b.url, KEY).post<{ message: ChatMessage }>(
      `/streams/${streamId}/finish`,
      {},
    );
    expect(done.status).toBe(201);
    expect(done.body.message.content).toBe("Secret sauce");
    expect(done.body.message.stopped).toBeUndefined();
  });
});

describe("replies that resume", () => {
  test("three chats streaming at once through both nodes; devices that open mid-reply or reconnect get it whole, once, in order", async () => {
    const uid = userId("bb_resume");
    const watcher = await on(a, uid); // open from the start
    const rw = record(watcher);
    const chats: string[] = [];
    for (const title of ["One", "Two", "Three"]) {
      const { chat } = await ok(watcher, "chat:create", { title });
      await ok(watcher, "chat:open", { chatId: chat.id });
      chats.push(chat.id);
    }
    const words = Array.from({ length: 48 }, (_, i) => `w${i}é `);
    const full = words.join("");
    const streams = await Promise.all(
      chats.map(async (chatId) => (await start(a, uid, chatId)).stream.streamId as string),
    );
    // Joiners: what each saw (from before its chat:open, deltas before the ack included).
    const joiners: {
      chatId: string;
      streamId: string;
      events: ReturnType<typeof record>;
      snapshot: string;
      nextIndex: number;
    }[] = [];
    const join = async (node: NodeProcess, k: number) => {
      const s = await on(node, uid);
      const events = record(s);
      const opened = await ok(s, "chat:open", { chatId: chats[k] as string, limit: 1 });
      const snap = opened.streams.find((x) => x.streamId === streams[k]);
      expect(snap, "the reply in progress is in the snapshot").toBeDefined();
      expect(opened.chat.generating?.streamId).toBe(streams[k]);
      joiners.push({
        chatId: chats[k] as string,
        streamId: streams[k] as string,
        events,
        snapshot: snap?.content ?? "",
        nextIndex: snap?.nextIndex ?? -1,
      });
      return s;
    };
    let reconnecting: ClientSocket | undefined;
    for (const [i, w] of words.entries()) {
      // Each chat's chunks alternate between the nodes (a load balancer's choice).
      await Promise.all(
        streams.map(async (streamId, k) => {
          const res = await chunk((i + k) % 2 === 0 ? a : b, streamId, i, w);
          expect(res.status).toBe(200);
        }),
      );
      if (i === 12) await join(b, 0); // opens mid-reply on the other node
      if (i === 16) reconnecting = await join(a, 1);
      if (i === 24 && reconnecting) {
        // Reconnect (or reload): a new connection, chat:open again.
        reconnecting.disconnect();
        joiners.splice(
          joiners.findIndex((j) => j.chatId === chats[1]),
          1,
        );
        await join(b, 1);
      }
      if (i === 30) await join(a, 2);
    }
    // Before the finish, every device shows the whole text so far, from its snapshot and deltas.
    await eventually(() => {
      for (const [k, streamId] of streams.entries()) {
        const deltas = rw.of<{ offset: number; delta: string }>("message:delta", streamId);
        expect(placeByOffset("", deltas)).toBe(full);
        expect(rw.of("message:streaming", streamId)).toHaveLength(1);
        expect(chats[k]).toBeDefined();
      }
      expect(joiners).toHaveLength(3);
      for (const j of joiners) {
        const deltas = j.events.of<{ offset: number; delta: string }>("message:delta", j.streamId);
        expect(full.startsWith(j.snapshot)).toBe(true);
        expect(j.nextIndex).toBeGreaterThan(0);
        expect(placeByOffset(j.snapshot, deltas)).toBe(full);
      }
    }, 10_000);
    // Indexes: every delta's index is the first chunk it covers, increasing with the offset.
    for (const streamId of streams) {
      const ds = rw.of<{ index: number; offset: number; delta: string }>("message:delta", streamId);
      const sorted = [...ds].sort((x, y) => x.offset - y.offset);
      for (const d of sorted)
        expect(full.slice(0, d.offset)).toBe(words.slice(0, d.index).join(""));
    }
    const list = (await ok(watcher, "chat:list", {})).chats;
    for (const [k, chatId] of chats.entries()) {
      expect(list.find((c) => c.id === chatId)?.generating?.streamId).toBe(streams[k]);
    }
    // Finish through either node: each reply stored once, replacing the stream everywhere.
    await Promise.all(
      streams.map(async (streamId, k) => {
        const res = await serviceClient((k % 2 === 0 ? b : a).url, KEY).post(
          `/streams/${streamId}/finish`,
          {},
        );
        expect(res.status).toBe(201);
      }),
    );
    await eventually(() => {
      for (const streamId of streams) {
        const created = rw
          .of<{ message: ChatMessage }>("message:created")
          .filter((e) => e.message.clientId === streamId);
        expect(created.map((e) => e.message.content)).toEqual([full]);
      }
      for (const j of joiners) {
        const created = j.events
          .of<{ message: ChatMessage }>("message:created")
          .filter((e) => e.message.clientId === j.streamId);
        expect(created).toHaveLength(1);
      }
    });
    for (const streamId of streams)
      expect(await rowsOf(streamId)).toEqual([{ content: full, stopped: false }]);
    const after = (await ok(watcher, "chat:list", {})).chats;
    for (const chatId of chats) expect(after.find((c) => c.id === chatId)?.generating).toBeNull();
  });
});

describe("stop, finish, fail and abandonment racing", () => {
  test("exactly one outcome, the same on both nodes, in the database and on every device", async () => {
    const uid = userId("bb_race");
    const dA = await on(a, uid);
    const dB = await on(b, uid);
    const rA = record(dA);
    const rB = record(dB);
    const { chat } = await ok(dA, "chat:create", { title: "Races" });
    const chatId = chat.id;
    await ok(dA, "chat:open", { chatId });
    await ok(dB, "chat:open", { chatId });
    const kinds = [
      "stop+finish",
      "stop+fail",
      "stop+finish+fail",
      "finish-then-stop",
      "stop+abandon",
    ] as const;
    const outcomes: Record<string, number> = {};
    for (let round = 0; round < 15; round++) {
      const kind = kinds[round % kinds.length] as (typeof kinds)[number];
      const streamId = (await start(a, uid, chatId)).stream.streamId as string;
      expect((await chunk(b, streamId, 0, `Part ${round}`)).status).toBe(200);
      const finish = () => serviceClient(a.url, KEY).post(`/streams/${streamId}/finish`, {});
      const fail = () =>
        serviceClient(a.url, KEY).post(`/streams/${streamId}/fail`, { message: "no" });
      const stop = () => ok(round % 2 ? dA : dB, "message:stop", { chatId, streamId });
      let finished: Awaited<ReturnType<typeof finish>> | undefined;
      let failed: Awaited<ReturnType<typeof fail>> | undefined;
      let stopped: Awaited<ReturnType<typeof stop>>;
      if (kind === "finish-then-stop") {
        finished = await finish();
        stopped = await stop();
      } else if (kind === "stop+abandon") {
        // Stop around the deadline (just before, between two sweeps, after a sweep: every node
        // sweeps each quarter of the timeout).
        const view = await serviceClient(b.url, KEY).get<{ stream: { expiresAt: string } }>(
          `/streams/${streamId}`,
        );
        const at = Date.parse(view.body.stream.expiresAt) + [-40, 250, 700][round % 3]!;
        await new Promise((r) => setTimeout(r, Math.max(0, at - Date.now())));
        stopped = await stop();
      } else {
        const [s, f, x] = await Promise.all([
          stop(),
          kind.includes("finish") ? finish() : undefined,
          kind.includes("fail") ? fail() : undefined,
        ]);
        stopped = s;
        finished = f;
        failed = x;
      }
      const outcome = stopped.status;
      outcomes[`${kind}:${outcome}`] = (outcomes[`${kind}:${outcome}`] ?? 0) + 1;
      const rows = await rowsOf(streamId);
      if (outcome === "stopped") {
        expect(rows).toEqual([{ content: `Part ${round}`, stopped: true }]);
        expect(stopped.message).toMatchObject({ clientId: streamId, stopped: true });
        if (finished) expect(errorOf(finished).code).toBe("STREAM_STOPPED");
        if (failed) expect(errorOf(failed).code).toBe("STREAM_STOPPED");
      } else if (outcome === "finished") {
        expect(rows).toEqual([{ content: `Part ${round}`, stopped: false }]);
        expect(stopped.message?.stopped).toBeUndefined();
        expect(finished?.status).toBe(201);
        if (failed) expect(failed.status).toBe(409);
      } else {
        expect(rows).toEqual([]);
        expect(stopped.message).toBeNull();
        if (finished) expect(finished.status).toBe(409);
      }
      for (const node of [a, b]) {
        const view = await serviceClient(node.url, KEY).get<{ stream: { status: string } }>(
          `/streams/${streamId}`,
        );
        expect(view.body.stream.status).toBe(outcome);
      }
      await eventually(() => {
        for (const r of [rA, rB]) {
          const created = r
            .of<{ message: ChatMessage }>("message:created")
            .filter((e) => e.message.clientId === streamId);
          expect(created).toHaveLength(rows.length);
          expect(r.of("message:failed", streamId)).toHaveLength(outcome === "failed" ? 1 : 0);
          expect(r.of("message:stopped", streamId).length > 0).toBe(outcome === "stopped");
          const gen = r.of<{ active: boolean }>("chat:generating", streamId);
          expect(gen.at(-1)?.active).toBe(false);
        }
      }, 10_000);
    }
    // Every kind ran; the log says which side won.
    console.log("race outcomes", outcomes);
    expect(
      (await ok(dA, "chat:list", {})).chats.find((c) => c.id === chatId)?.generating,
    ).toBeNull();
  });
});

describe("a node killed mid-stream", () => {
  test("SIGKILL: the backend carries on through another node, or the stream is abandoned at the documented timeout", async () => {
    const c = await startNode(tdb.url, env);
    try {
      const uid = userId("bb_killed");
      const d = await on(a, uid);
      const rd = record(d);
      const { chat } = await ok(d, "chat:create", { title: "Killed" });
      const chatId = chat.id;
      await ok(d, "chat:open", { chatId });
      const carried = (await start(c, uid, chatId)).stream.streamId as string;
      const dropped = (await start(c, uid, chatId)).stream.streamId as string;
      expect((await chunk(c, carried, 0, "Begun ")).status).toBe(200);
      expect((await chunk(c, dropped, 0, "Begun ")).status).toBe(200);
      // Killed at once: its deltas of the last 40 ms may never have been sent.
      await c.kill();
      const silentSince = Date.now();

      expect((await chunk(b, carried, 1, "and ")).status).toBe(200);
      // A device that misses text re-snapshots (docs/protocol.md): the text so far is whole.
      const fresh = await ok(d, "chat:open", { chatId, limit: 1 });
      expect(fresh.streams.map((s) => [s.streamId, s.content, s.nextIndex])).toEqual([
        [carried, "Begun and ", 2],
        [dropped, "Begun ", 1],
      ]);
      expect((await chunk(a, carried, 2, "ended.")).status).toBe(200);
      const done = await serviceClient(b.url, KEY).post<{ message: ChatMessage }>(
        `/streams/${carried}/finish`,
        {},
      );
      expect(done.status).toBe(201);
      expect(done.body.message.content).toBe("Begun and ended.");

      const failed = await eventually(() => {
        const f = rd.of<Record<string, unknown>>("message:failed", dropped);
        expect(f).toHaveLength(1);
        return { event: f[0], at: rd.events.find((e) => e.name === "message:failed")?.at ?? 0 };
      }, 15_000);
      expect(failed.event).toEqual({
        streamId: dropped,
        chatId,
        reason: "ABANDONED",
        message: expect.any(String),
      });
      // Not before the timeout; within it plus a sweep interval (a quarter of it) and slack.
      const after = failed.at - silentSince;
      console.log(
        `abandoned ${after} ms after the stream went silent (timeout ${STREAM_TIMEOUT_MS})`,
      );
      expect(after).toBeGreaterThanOrEqual(STREAM_TIMEOUT_MS - 100);
      expect(after).toBeLessThan(STREAM_TIMEOUT_MS * 1.25 + 2000);
      const late = await serviceClient(a.url, KEY).post(`/streams/${dropped}/finish`, {});
      expect(late.status).toBe(409);
      expect(errorOf(late).code).toBe("CONFLICT");
      expect(await rowsOf(dropped)).toEqual([]);
      expect(await rowsOf(carried)).toEqual([{ content: "Begun and ended.", stopped: false }]);
      await eventually(() => {
        const ends = rd
          .of<{ streamId: string; active: boolean }>("chat:generating")
          .filter((g) => !g.active)
          .map((g) => g.streamId);
        expect(ends.sort()).toEqual([carried, dropped].sort());
      });
      expect(
        (await ok(d, "chat:list", {})).chats.find((x) => x.id === chatId)?.generating,
      ).toBeNull();
    } finally {
      await c.kill();
    }
  });
});

describe("a node killed while storing a finish", () => {
  test("SIGKILL inside the finish: another node's sweep stores the reply the finish asked for, once; devices get message:created; the retried finish is a duplicate", async () => {
    // Its finishes hold a lease of the stream timeout plus twice its command timeout (4 s).
    const c = await startNode(tdb.url, { ...env, COMMAND_TIMEOUT_MS: "1000" });
    const locker = openSql(tdb.url);
    try {
      const uid = userId("bb_killed_finish");
      const d = await on(a, uid);
      const rd = record(d);
      const { chat } = await ok(d, "chat:create", { title: "Killed finishing" });
      const chatId = chat.id;
      await ok(d, "chat:open", { chatId });
      const streamId = (await start(c, uid, chatId)).stream.streamId as string;
      expect((await chunk(c, streamId, 0, "Draft ")).status).toBe(200);
      // The database holds the finish's write (a table lock), so node c is killed inside it.
      let release: () => void = () => {};
      const released = new Promise<void>((r) => {
        release = r;
      });
      let locked: () => void = () => {};
      const isLocked = new Promise<void>((r) => {
        locked = r;
      });
      const holding = locker.begin(async (tx) => {
        await tx`lock table chat_memory in access exclusive mode`;
        locked();
        await released;
      });
      await isLocked;
      const finishing = serviceClient(c.url, KEY)
        .post(`/streams/${streamId}/finish`, { content: "The final reply." })
        .catch(() => undefined);
      await eventually(async () => {
        const view = await serviceClient(b.url, KEY).get<{ stream: { status: string } }>(
          `/streams/${streamId}`,
        );
        expect(view.body.stream.status).toBe("finishing");
      });
      await c.kill();
      release();
      await holding;
      await finishing;

      // The backend retries its finish on another node until it is answered (503 meanwhile).
      let retried: { status: number; body: { message: ChatMessage; duplicate: boolean } };
      const until = Date.now() + 30_000;
      for (;;) {
        retried = await serviceClient(b.url, KEY).post<{
          message: ChatMessage;
          duplicate: boolean;
        }>(`/streams/${streamId}/finish`, { content: "The final reply." });
        if (retried.status !== 503 || Date.now() > until) break;
      }
      expect(retried.status, JSON.stringify(retried.body)).toBe(200);
      expect(retried.body).toMatchObject({
        duplicate: true,
        message: { clientId: streamId, content: "The final reply." },
      });
      await eventually(() => {
        const created = rd.of<{ message: ChatMessage }>("message:created");
        expect(created.map((e) => e.message.seq)).toContain(retried.body.message.seq);
        expect(created.every((e) => e.message.id === retried.body.message.id)).toBe(true);
        expect(
          rd.of<{ active: boolean }>("chat:generating", streamId).filter((g) => !g.active),
        ).not.toHaveLength(0);
      }, 15_000);
      expect(rd.of("message:failed", streamId)).toEqual([]);
      expect(await rowsOf(streamId)).toEqual([{ content: "The final reply.", stopped: false }]);
      const view = await serviceClient(a.url, KEY).get<{ stream: { status: string } }>(
        `/streams/${streamId}`,
      );
      expect(view.body.stream.status).toBe("finished");
    } finally {
      await c.kill();
      await locker.end({ timeout: 5 });
    }
  }, 90_000);
});

describe("a node stopped gracefully mid-stream (SIGTERM)", () => {
  test("it sends the text it still holds before it exits: devices see no hole; the stream goes on elsewhere", async () => {
    const c = await startNode(tdb.url, env);
    try {
      const uid = userId("bb_drained");
      const d = await on(a, uid);
      const rd = record(d);
      const { chat } = await ok(d, "chat:create", { title: "Drained" });
      await ok(d, "chat:open", { chatId: chat.id });
      const streamId = (await start(c, uid, chat.id)).stream.streamId as string;
      expect((await chunk(c, streamId, 0, "Held ")).status).toBe(200);
      expect((await chunk(c, streamId, 1, "by C, ")).status).toBe(200);
      await c.stop();
      expect((await chunk(a, streamId, 2, "then A.")).status).toBe(200);
      await eventually(() => {
        expect(
          placeByOffset("", rd.of<{ offset: number; delta: string }>("message:delta", streamId)),
        ).toBe("Held by C, then A.");
      });
      expect((await serviceClient(b.url, KEY).post(`/streams/${streamId}/finish`, {})).status).toBe(
        201,
      );
    } finally {
      await c.kill();
    }
  });
});

describe("Redis restarting mid-stream (no persistence: its data lost)", () => {
  test("503 while it is down, chats still open without streams; then 404, and the reply posted whole replaces the stream", async () => {
    const uid = userId("bb_redis");
    const dA = await on(a, uid);
    const dB = await on(b, uid);
    const rB = record(dB);
    const { chat } = await ok(dA, "chat:create", { title: "Redis" });
    const chatId = chat.id;
    await ok(dA, "chat:open", { chatId });
    await ok(dB, "chat:open", { chatId });
    const streamId = (await start(a, uid, chatId)).stream.streamId as string;
    expect((await chunk(a, streamId, 0, "Hello")).status).toBe(200);
    await redis.kill();
    try {
      for (const node of [a, b]) {
        const down = await chunk(node, streamId, 1, " there");
        expect(down.status).toBe(503);
        expect(errorOf(down).code).toBe("UNAVAILABLE");
      }
      const opened = await ok(dB, "chat:open", { chatId });
      expect(opened.streams).toEqual([]);
      expect(opened.chat.generating).toBeNull();
      expect(
        (await ok(dA, "chat:list", {})).chats.find((c) => c.id === chatId)?.generating,
      ).toBeNull();
      const stop = await refused(dA, "message:stop", { chatId, streamId });
      expect(stop.code).toBe("UNAVAILABLE");
    } finally {
      await redis.start();
    }
    const after = await eventually(async () => {
      const r = await chunk(b, streamId, 1, " there");
      expect(r.status).not.toBe(503);
      return r;
    }, 20_000);
    expect(after.status).toBe(404);
    expect(errorOf(after).code).toBe("NOT_FOUND");
    const posted = await serviceClient(a.url, KEY).post<{ message: ChatMessage }>(
      `/users/${uid}/chats/${chatId}/messages`,
      { clientId: streamId, content: "Hello there" },
    );
    expect(posted.status).toBe(201);
    const postedAt = Date.now();
    // The device on the other node gets it live, or, if it was published before node A's own
    // link was back (and so may have been lost), a connection:resync after it was stored, which
    // has the device re-read (docs/protocol.md, "Resynchronisation").
    await eventually(() => {
      const live = rB
        .of<{ message: ChatMessage }>("message:created")
        .map((m) => m.message.clientId);
      const resyncedAfter = rB.events.some(
        (ev) => ev.name === "connection:resync" && ev.at >= postedAt - 50,
      );
      expect(live.includes(streamId) || resyncedAfter).toBe(true);
    }, 20_000);
    // Cross-node events flow live again: a later message reaches the other node's device.
    await eventually(async () => {
      const clientId = randomUUID();
      const r = await serviceClient(a.url, KEY).post(`/users/${uid}/chats/${chatId}/messages`, {
        clientId,
        content: "flowing",
      });
      expect(r.status).toBe(201);
      await eventually(() => {
        expect(
          rB.of<{ message: ChatMessage }>("message:created").map((m) => m.message.clientId),
        ).toContain(clientId);
      }, 2_000);
    }, 20_000);
    // And a new stream works through both nodes again.
    const next = (await start(b, uid, chatId)).stream.streamId as string;
    expect((await chunk(a, next, 0, "Back")).status).toBe(200);
    expect((await serviceClient(b.url, KEY).post(`/streams/${next}/finish`, {})).status).toBe(201);
  }, 60_000);
});

describe("retries racing the call they retry", () => {
  test("a finish retried while the first is still storing (another node) answers the stored reply, not 409", async () => {
    const uid = userId("bb_refinish");
    const d = await on(a, uid);
    const { chat } = await ok(d, "chat:create", { title: "Refinish" });
    const statuses: number[][] = [];
    for (let round = 0; round < 8; round++) {
      const streamId = (await start(a, uid, chat.id)).stream.streamId as string;
      expect((await chunk(a, streamId, 0, `Reply ${round}`)).status).toBe(200);
      const both = await Promise.all(
        [a, b].map((node) =>
          serviceClient(node.url, KEY).post<{ message: ChatMessage; duplicate: boolean }>(
            `/streams/${streamId}/finish`,
            {},
          ),
        ),
      );
      statuses.push(both.map((r) => r.status).sort());
      for (const r of both) {
        expect(r.status, JSON.stringify(r.body)).toBeLessThan(300);
        expect(r.body.message).toMatchObject({ clientId: streamId, content: `Reply ${round}` });
      }
      expect(both.map((r) => r.body.duplicate).sort()).toEqual([false, true]);
      expect(await rowsOf(streamId)).toHaveLength(1);
    }
    expect(statuses.every((s) => s[0] === 200 && s[1] === 201)).toBe(true);
  });
});

describe("fail, as documented", () => {
  test("fail answers the failed stream, broadcasts message:failed once; retried 200; later calls 409", async () => {
    const uid = userId("bb_fail");
    const d = await on(b, uid);
    const rd = record(d);
    const { chat } = await ok(d, "chat:create", { title: "Fail" });
    await ok(d, "chat:open", { chatId: chat.id });
    for (const message of ["The model provider timed out", undefined]) {
      const streamId = (await start(a, uid, chat.id)).stream.streamId as string;
      expect((await chunk(a, streamId, 0, "Some")).status).toBe(200);
      const failed = await serviceClient(a.url, KEY).post<{ stream: Record<string, unknown> }>(
        `/streams/${streamId}/fail`,
        message ? { message } : {},
      );
      expect(failed.status).toBe(200);
      const text = message ?? "The reply could not be completed";
      expect(failed.body.stream).toMatchObject({
        streamId,
        status: "failed",
        expiresAt: null,
        failure: { reason: "FAILED", message: text },
      });
      const again = await serviceClient(b.url, KEY).post(`/streams/${streamId}/fail`, {});
      expect(again.status).toBe(200);
      expect(again.body).toEqual(failed.body);
      const finish = await serviceClient(b.url, KEY).post(`/streams/${streamId}/finish`, {});
      expect(finish.status).toBe(409);
      expect(errorOf(finish).code).toBe("CONFLICT");
      const late = await chunk(b, streamId, 1, "more");
      expect(late.status).toBe(409);
      expect(errorOf(late).code).toBe("CONFLICT");
      const stop = await ok(d, "message:stop", { chatId: chat.id, streamId });
      expect(stop).toEqual({ streamId, status: "failed", message: null });
      await eventually(() => {
        expect(rd.of("message:failed", streamId)).toEqual([
          { streamId, chatId: chat.id, reason: "FAILED", message: text },
        ]);
      });
      expect(await rowsOf(streamId)).toEqual([]);
    }
  });
});

describe("bad input to the loop's calls", () => {
  test("documented statuses and codes", async () => {
    const uid = userId("bb_bad");
    const other = userId("bb_bad_other");
    const d = await on(a, uid);
    const x = await on(b, other);
    const { chat } = await ok(d, "chat:create", { title: "Bad" });
    const { chat: theirs } = await ok(x, "chat:create", { title: "Theirs" });
    const api = serviceClient(a.url, KEY);
    const cases: [string, unknown, number, string][] = [
      [`/users/${uid}/chats/${theirs.id}/streams`, {}, 404, "NOT_FOUND"],
      [`/users/user_nobody_here/chats/${chat.id}/streams`, {}, 404, "NOT_FOUND"],
      [`/users/${uid}/chats/not-a-uuid/streams`, {}, 400, "INVALID_PAYLOAD"],
      [`/users/${uid}/chats/${chat.id}/streams`, { streamId: "bad id!" }, 400, "INVALID_PAYLOAD"],
      [`/users/${uid}/chats/${chat.id}/streams`, { role: "user" }, 400, "INVALID_PAYLOAD"],
      [`/users/${uid}/chats/${chat.id}/streams`, { extra: 1 }, 400, "INVALID_PAYLOAD"],
      ["/streams/no-such-stream/chunks", { index: 0, delta: "x" }, 404, "NOT_FOUND"],
      ["/streams/no-such-stream/finish", {}, 404, "NOT_FOUND"],
      ["/streams/no-such-stream/fail", {}, 404, "NOT_FOUND"],
    ];
    for (const [path, body, status, code] of cases) {
      const res = await api.post(path, body);
      expect(res.status, path).toBe(status);
      expect(errorOf(res).code, path).toBe(code);
    }
    expect((await api.get("/streams/no-such-stream")).status).toBe(404);
    const streamId = (await start(a, uid, chat.id)).stream.streamId as string;
    for (const body of [
      { index: 0, delta: "" },
      { index: -1, delta: "x" },
      { index: 0, delta: "x", extra: true },
      { chunks: [] },
      {
        chunks: [
          { index: 0, delta: "a" },
          { index: 2, delta: "b" },
        ],
      },
      { index: 0, delta: "x".repeat(64_001) },
    ]) {
      const res = await api.post(`/streams/${streamId}/chunks`, body);
      expect(res.status, JSON.stringify(body).slice(0, 80)).toBe(400);
      expect(errorOf(res).code).toBe("INVALID_PAYLOAD");
    }
    // Nothing was appended by any of them.
    const view = await api.get<{ stream: { nextIndex: number; length: number } }>(
      `/streams/${streamId}`,
    );
    expect(view.body.stream).toMatchObject({ nextIndex: 0, length: 0 });
    // Finishing with nothing: 400, and the stream stays open.
    const empty = await api.post(`/streams/${streamId}/finish`, {});
    expect(empty.status).toBe(400);
    expect(
      (await api.get<{ stream: { status: string } }>(`/streams/${streamId}`)).body.stream.status,
    ).toBe("active");
    for (const payload of [
      { chatId: chat.id },
      { chatId: chat.id, streamId, extra: 1 },
      { chatId: "nope", streamId },
      { chatId: chat.id, streamId: "bad id!" },
    ]) {
      expect((await refused(d, "message:stop", payload)).code).toBe("INVALID_PAYLOAD");
    }
  });
});

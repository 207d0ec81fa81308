/**
 * Streamed replies that resume, stop and show as generating, against a real server, Postgres
 * and sockets, once with the in-memory stream store (one node) and once with Redis: a device
 * that opens the chat (or reconnects) mid-reply gets the text so far and then the rest, nothing
 * missing or twice; several chats stream at once; deltas are coalesced; a stop from one device
 * reaches the others and the backend and stores the partial reply once, whatever it races;
 * only the owner can stop; the sidebar's generating state, listed and live.
 */
import { randomBytes } from "node:crypto";
import { Redis } from "ioredis";
import type postgres from "postgres";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import type {
  ChatGenerating,
  ChatMessage,
  MessageDelta,
  MessageStopped,
  StreamSnapshot,
} from "../../protocol/index.js";
import type { StreamStore } from "../../server/src/repositories/stream.repository.js";
import type { AppEvents } from "../../server/src/services/app-events.js";
import {
  type ClientSocket,
  eventually,
  recordEvents,
  startTestServer,
  type TestServer,
  testRedisUrl,
} from "../helpers/server.js";
import { nextEvent, ok, openSql, refused, userId } from "../realtime/support.js";
import { chatOpenOn, errorOf, newServiceKey, serviceClient, streamedText } from "./support.js";

const KEY = newServiceKey();

/**
 * What a device shows of a stream: the snapshot's text, then each delta placed by offset (the
 * part already shown is dropped). A delta beyond the text is a hole: the test fails.
 */
export function follow(snapshotText: string, deltas: readonly MessageDelta[]): string {
  let text = snapshotText;
  for (const d of [...deltas].sort((a, b) => a.offset - b.offset)) {
    expect(d.offset, "a delta beyond the text shown (text missed)").toBeLessThanOrEqual(
      text.length,
    );
    if (d.offset + d.delta.length <= text.length) continue;
    text += d.delta.slice(text.length - d.offset);
  }
  return text;
}

type Stop = { streamId: string; status: string; message: ChatMessage | null };

for (const backend of ["memory", "redis"] as const) {
  describe(`streams (${backend} store)`, () => {
    let server: TestServer;
    let sql: postgres.Sql;
    let api: ReturnType<typeof serviceClient>;
    const told: Parameters<AppEvents["stopRequested"]>[0][] = [];
    const prefix = `test-streams-${randomBytes(4).toString("hex")}`;

    beforeAll(async () => {
      server = await startTestServer({
        serviceApiKey: KEY,
        appEvents: {
          async stopRequested(event) {
            told.push(event);
          },
        },
        ...(backend === "redis" ? { redisUrl: testRedisUrl, redisKeyPrefix: prefix } : {}),
      });
      sql = openSql(server.databaseUrl);
      api = serviceClient(server.url, KEY);
    });
    afterAll(async () => {
      await sql?.end({ timeout: 5 });
      await server?.close();
      if (backend === "redis") {
        const redis = new Redis(testRedisUrl, { maxRetriesPerRequest: 1 });
        try {
          const keys = await redis.keys(`${prefix}:*`);
          if (keys.length > 0) await redis.del(...keys);
        } finally {
          redis.disconnect();
        }
      }
    });

    async function startStream(uid: string, chatId: string, streamId?: string) {
      const res = await api.post<{ stream: { streamId: string } }>(
        `/users/${uid}/chats/${chatId}/streams`,
        streamId ? { streamId } : {},
      );
      expect(res.status).toBe(201);
      return res.body.stream.streamId;
    }

    async function chunk(streamId: string, index: number, delta: string) {
      const res = await api.post(`/streams/${streamId}/chunks`, { index, delta });
      expect(res.status, JSON.stringify(res.body)).toBe(200);
    }

    async function rowsOf(chatId: string) {
      return sql<{ client_id: string; content: string; stopped: boolean | null }[]>`
        select client_id, message->>'content' as content, (message->>'stopped')::boolean as stopped
          from chat_memory where session_id = ${chatId} order by seq`;
    }

    test("a device that opens the chat mid-reply gets the text so far, then the rest, once", async () => {
      const uid = userId(`resume_${backend}`);
      const a = await server.connectAs(uid);
      const chatId = await chatOpenOn(a, [a]);
      const streamId = await startStream(uid, chatId);
      const words = Array.from({ length: 60 }, (_, i) => `w${i} `);
      const expected = words.join("");

      // The backend keeps streaming while a second device opens the chat part-way through.
      let opened: { streams: StreamSnapshot[] } | undefined;
      let b: ClientSocket | undefined;
      let recB: ReturnType<typeof recordEvents> | undefined;
      for (const [i, w] of words.entries()) {
        await chunk(streamId, i, w);
        if (i === 25) {
          b = await server.connectAs(uid);
          recB = recordEvents(b);
          opened = await ok(b, "chat:open", { chatId });
        }
      }
      const snapshot = opened?.streams[0] as StreamSnapshot;
      expect(opened?.streams).toHaveLength(1);
      expect(snapshot).toMatchObject({ streamId, chatId, role: "assistant" });
      expect(snapshot.content.length).toBeGreaterThan(0);
      expect(expected.startsWith(snapshot.content)).toBe(true);
      expect(snapshot.nextIndex).toBe(words.slice(0, snapshot.nextIndex).length);
      expect(words.slice(0, snapshot.nextIndex).join("")).toBe(snapshot.content);

      await eventually(() => {
        expect(follow(snapshot.content, recB?.of<MessageDelta>("message:delta") ?? [])).toBe(
          expected,
        );
      });
      // The device that watched from the start saw every character exactly once.
      const recA = recordEvents(a);
      const finished = await api.post<{ message: ChatMessage }>(`/streams/${streamId}/finish`);
      expect(finished.status).toBe(201);
      await eventually(() => {
        expect(recA.of<{ message: ChatMessage }>("message:created")).toHaveLength(1);
      });
      expect(finished.body.message.content).toBe(expected);
      // Once stored, it is not a stream any more.
      expect((await ok(b as ClientSocket, "chat:open", { chatId })).streams).toEqual([]);
    });

    test("a device that reconnects mid-reply resumes from a fresh snapshot", async () => {
      const uid = userId(`reconnect_${backend}`);
      const a = await server.connectAs(uid);
      const chatId = await chatOpenOn(a, [a]);
      const streamId = await startStream(uid, chatId);
      await chunk(streamId, 0, "Once upon ");
      a.disconnect();
      await chunk(streamId, 1, "a time, ");
      const again = await server.connectAs(uid);
      const rec = recordEvents(again);
      const { streams } = await ok(again, "chat:open", { chatId, limit: 1 });
      expect(streams.map((s) => [s.streamId, s.content, s.nextIndex])).toEqual([
        [streamId, "Once upon a time, ", 2],
      ]);
      await chunk(streamId, 2, "the end.");
      await eventually(() => {
        expect(follow(streams[0]?.content ?? "", rec.of<MessageDelta>("message:delta"))).toBe(
          "Once upon a time, the end.",
        );
      });
    });

    test("several chats stream at once, each to its own room, and all show as generating", async () => {
      const uid = userId(`multi_${backend}`);
      const d = await server.connectAs(uid);
      const chats = [await chatOpenOn(d, [d], "one"), await chatOpenOn(d, [d], "two")];
      const rec = recordEvents(d);
      const ids = [
        await startStream(uid, chats[0] as string),
        await startStream(uid, chats[1] as string),
      ];
      for (let i = 0; i < 10; i++) {
        await Promise.all(ids.map((id, n) => chunk(id, i, `${n}:${i} `)));
      }
      const listed = await ok(d, "chat:list", {});
      for (const [n, chatId] of chats.entries()) {
        expect(listed.chats.find((c) => c.id === chatId)?.generating).toEqual({
          streamId: ids[n],
          startedAt: expect.any(String),
        });
      }
      await eventually(() => {
        for (const [n, id] of ids.entries()) {
          const mine = rec.of<MessageDelta>("message:delta").filter((e) => e.streamId === id);
          for (const e of mine) expect(e.chatId).toBe(chats[n]);
          expect(streamedText(mine)).toBe(
            Array.from({ length: 10 }, (_, i) => `${n}:${i} `).join(""),
          );
        }
      });
    });

    test("stop from one device: the others see it at once, the backend is refused and told, the text so far is stored once", async () => {
      const uid = userId(`stop_${backend}`);
      const a = await server.connectAs(uid);
      const b = await server.connectAs(uid);
      const sidebarOnly = await server.connectAs(uid);
      const chatId = await chatOpenOn(a, [a, b]);
      const side = recordEvents(sidebarOnly);
      const streamId = await startStream(uid, chatId);
      await chunk(streamId, 0, "Half of ");
      await chunk(streamId, 1, "an answer");
      const stoppedOnB = nextEvent(b, "message:stopped");
      const createdOnB = nextEvent(b, "message:created");

      const ack = await ok(a, "message:stop", { chatId, streamId });
      expect(ack).toEqual({
        streamId,
        status: "stopped",
        message: expect.objectContaining({
          clientId: streamId,
          content: "Half of an answer",
          role: "assistant",
          stopped: true,
        }),
      });
      expect(await stoppedOnB).toEqual<MessageStopped>({
        streamId,
        chatId,
        stoppedAt: expect.any(String),
      });
      expect((await createdOnB).message).toEqual(ack.message);
      expect(told).toContainEqual({
        userId: uid,
        chatId,
        streamId,
        requestedAt: expect.any(String),
      });

      // The backend goes on anyway: every call is refused with STREAM_STOPPED (409).
      const late = await api.post(`/streams/${streamId}/chunks`, { index: 2, delta: "!" });
      expect(late.status).toBe(409);
      expect(errorOf(late).code).toBe("STREAM_STOPPED");
      for (const path of ["finish", "fail"]) {
        const r = await api.post(`/streams/${streamId}/${path}`, {});
        expect(r.status).toBe(409);
        expect(errorOf(r).code).toBe("STREAM_STOPPED");
      }
      const view = await api.get<{ stream: { status: string; expiresAt: unknown } }>(
        `/streams/${streamId}`,
      );
      expect(view.body.stream).toMatchObject({ status: "stopped", expiresAt: null });
      // A second stop (another device) answers the same; nothing is stored twice.
      expect(await ok(b, "message:stop", { chatId, streamId })).toEqual(ack);
      expect(await rowsOf(chatId)).toEqual([
        { client_id: streamId, content: "Half of an answer", stopped: true },
      ]);
      // History returns it marked as stopped too.
      const page = await ok(a, "message:history", { chatId });
      expect(page.messages).toEqual([ack.message]);
      // The sidebar-only device saw it start and end.
      await eventually(() => {
        expect(side.of<ChatGenerating>("chat:generating")).toEqual([
          { chatId, streamId, active: true, startedAt: expect.any(String) },
          { chatId, streamId, active: false, startedAt: expect.any(String) },
        ]);
      });
      expect((await ok(a, "chat:list", {})).chats[0]?.generating).toBeNull();
    });

    test("a stop with nothing streamed yet stores nothing", async () => {
      const uid = userId(`stopempty_${backend}`);
      const a = await server.connectAs(uid);
      const chatId = await chatOpenOn(a, [a]);
      const streamId = await startStream(uid, chatId);
      const stopped = nextEvent(a, "message:stopped");
      expect(await ok(a, "message:stop", { chatId, streamId })).toEqual({
        streamId,
        status: "stopped",
        message: null,
      });
      await stopped;
      expect(await rowsOf(chatId)).toEqual([]);
    });

    test("only the owner can stop, and only in the stream's chat", async () => {
      const owner = userId(`owner_${backend}`);
      const a = await server.connectAs(owner);
      const chatId = await chatOpenOn(a, [a]);
      const other = await chatOpenOn(a, [a], "other");
      const streamId = await startStream(owner, chatId);
      const mallory = await server.connectAs(userId(`mallory_${backend}`));
      expect((await refused(mallory, "message:stop", { chatId, streamId })).code).toBe("NOT_FOUND");
      expect((await refused(a, "message:stop", { chatId: other, streamId })).code).toBe(
        "NOT_FOUND",
      );
      expect((await refused(a, "message:stop", { chatId, streamId: "no-such-stream" })).code).toBe(
        "NOT_FOUND",
      );
      // Still streaming.
      await chunk(streamId, 0, "still here");
      expect((await ok(a, "chat:open", { chatId })).streams[0]?.content).toBe("still here");
    });

    test("a stop just after the finish reports the stored reply", async () => {
      const uid = userId(`late_${backend}`);
      const a = await server.connectAs(uid);
      const chatId = await chatOpenOn(a, [a]);
      const streamId = await startStream(uid, chatId);
      await chunk(streamId, 0, "Complete.");
      const finished = await api.post<{ message: ChatMessage }>(`/streams/${streamId}/finish`);
      expect(await ok(a, "message:stop", { chatId, streamId })).toEqual({
        streamId,
        status: "finished",
        message: finished.body.message,
      });
      expect(finished.body.message.stopped).toBeUndefined();
    });

    test("stop racing finish, fail or abandonment: exactly one outcome and at most one stored reply", async () => {
      const uid = userId(`race_${backend}`);
      const a = await server.connectAs(uid);
      const chatId = await chatOpenOn(a, [a]);
      const rec = recordEvents(a);
      const outcomes = new Set<string>();
      const rounds = 24;
      for (let i = 0; i < rounds; i++) {
        const streamId = await startStream(uid, chatId, `race-${backend}-${i}`);
        await chunk(streamId, 0, `text ${i}`);
        const kind = (["finish", "fail", "sweep"] as const)[i % 3];
        // The sweep acts as if the stream timeout had passed (it also sweeps other streams).
        const other =
          kind === "sweep"
            ? server.app.services.streams.sweep(Date.now() + 61_000).then(() => ({ status: 0 }))
            : api.post(`/streams/${streamId}/${kind}`, {});
        const [stop, rival] = await Promise.all([
          ok(a, "message:stop", { chatId, streamId }) as Promise<Stop>,
          other,
        ]);
        const rivalStatus = rival.status;
        outcomes.add(`${kind}:${stop.status}`);
        if (stop.status === "stopped") {
          // The stop won: the backend's call was refused.
          if (kind !== "sweep") expect(rivalStatus).toBe(409);
          expect(stop.message).toMatchObject({ content: `text ${i}`, stopped: true });
        } else if (kind === "finish") {
          expect(stop.status).toBe("finished");
          expect(rivalStatus).toBe(201);
          expect(stop.message?.stopped).toBeUndefined();
        } else {
          expect(stop.status).toBe("failed");
          expect(stop.message).toBeNull();
        }
        const view = await api.get<{ stream: { status: string } }>(`/streams/${streamId}`);
        expect(view.body.stream.status).toBe(stop.status);
      }
      // Each stream: one row at most, and it matches the outcome; one end event each.
      const rows = await rowsOf(chatId);
      expect(new Set(rows.map((r) => r.client_id)).size).toBe(rows.length);
      await eventually(() => {
        const stopped = new Set(rec.of<MessageStopped>("message:stopped").map((e) => e.streamId));
        const failed = rec.of<{ streamId: string }>("message:failed").map((e) => e.streamId);
        expect(new Set(failed).size).toBe(failed.length);
        for (const id of failed) expect(stopped.has(id)).toBe(false);
        const finishedIds = rows.filter((r) => !r.stopped).map((r) => r.client_id);
        for (const id of finishedIds) expect(stopped.has(id) || failed.includes(id)).toBe(false);
        expect(stopped.size + failed.length + finishedIds.length).toBe(rounds);
      });
      expect(outcomes.size).toBeGreaterThan(1);
    });

    test("a finish whose node stopped while storing it: the sweep stores exactly what it asked, once; a retry is a duplicate", async () => {
      const uid = userId(`fin_sweep_${backend}`);
      const d = await server.connectAs(uid);
      const chatId = await chatOpenOn(d, [d]);
      const rec = recordEvents(d);
      const store = Reflect.get(server.app.services.streams, "store") as StreamStore;
      const [over, plain] = [await startStream(uid, chatId), await startStream(uid, chatId)];
      for (const s of [over, plain]) {
        await chunk(s, 0, "Hel");
        await chunk(s, 1, "lo");
      }
      // What a finish leaves behind when its node dies right after claiming the stream:
      // `finishing`, with the content it was given (or none: the chunks), its lease passed.
      for (const [s, finishContent] of [
        [over, "Hello, world"],
        [plain, null],
      ] as const) {
        const claimed = await store.transition(s, "active", "finishing", {
          deadline: Date.now() - 1,
          ttlMs: 60_000,
          finishContent,
        });
        expect(claimed.ok).toBe(true);
      }
      await server.app.services.streams.sweep();
      await eventually(() => {
        const created = rec.of<{ message: ChatMessage }>("message:created").map((e) => e.message);
        expect(created.map((m) => [m.clientId, m.content]).sort()).toEqual(
          [
            [over, "Hello, world"],
            [plain, "Hello"],
          ].sort(),
        );
        const ended = rec.of<ChatGenerating>("chat:generating").filter((g) => !g.active);
        expect(ended.map((g) => g.streamId).sort()).toEqual([over, plain].sort());
      });
      expect(rec.of("message:failed")).toEqual([]);
      for (const s of [over, plain]) {
        const view = await api.get<{ stream: { status: string } }>(`/streams/${s}`);
        expect(view.body.stream.status).toBe("finished");
      }
      // The backend's retried finish: the stored reply, as a duplicate; nothing stored twice.
      const created = rec.of<{ message: ChatMessage }>("message:created").map((e) => e.message);
      const retried = await api.post<{ message: ChatMessage; duplicate: boolean }>(
        `/streams/${over}/finish`,
        { content: "Hello, world" },
      );
      expect(retried.status, JSON.stringify(retried.body)).toBe(200);
      expect(retried.body).toMatchObject({ duplicate: true });
      expect(retried.body.message.id).toBe(created.find((m) => m.clientId === over)?.id);
      const bare = await api.post<{ message: ChatMessage; duplicate: boolean }>(
        `/streams/${plain}/finish`,
        {},
      );
      expect(bare.status, JSON.stringify(bare.body)).toBe(200);
      expect(bare.body).toMatchObject({ duplicate: true, message: { content: "Hello" } });
      // Another sweep (another node's, or this one's again) finds nothing left to do.
      expect(await server.app.services.streams.sweep()).toBe(0);
      expect((await rowsOf(chatId)).map((r) => [r.client_id, r.content]).sort()).toEqual(
        [
          [over, "Hello, world"],
          [plain, "Hello"],
        ].sort(),
      );
      expect(rec.of("message:created")).toHaveLength(2);
    });

    test("a finish whose node stored the reply but died before recording it: the sweep repeats message:created and marks it finished", async () => {
      const uid = userId(`fin_stored_${backend}`);
      const d = await server.connectAs(uid);
      const chatId = await chatOpenOn(d, [d]);
      const store = Reflect.get(server.app.services.streams, "store") as StreamStore;
      const streamId = await startStream(uid, chatId);
      await chunk(streamId, 0, "Stored");
      const claimed = await store.transition(streamId, "active", "finishing", {
        deadline: Date.now() - 1,
        ttlMs: 60_000,
        finishContent: null,
      });
      expect(claimed.ok).toBe(true);
      // The dying node's write reached the database (its broadcast may not have gone out).
      const posted = await api.post<{ message: ChatMessage }>(
        `/users/${uid}/chats/${chatId}/messages`,
        { clientId: streamId, role: "assistant", content: "Stored" },
      );
      expect(posted.status).toBe(201);
      const rec = recordEvents(d);
      await server.app.services.streams.sweep();
      await eventually(() => {
        const created = rec.of<{ message: ChatMessage }>("message:created").map((e) => e.message);
        expect(created).toEqual([posted.body.message]);
      });
      expect(rec.of("message:failed")).toEqual([]);
      const view = await api.get<{ stream: { status: string } }>(`/streams/${streamId}`);
      expect(view.body.stream.status).toBe("finished");
      expect((await rowsOf(chatId)).map((r) => r.client_id)).toEqual([streamId]);
    });

    test("coalescing: one delta per flush instead of one per chunk, with the same text", async () => {
      const uid = userId(`coalesce_${backend}`);
      const plain = await startTestServer({
        databaseUrl: server.databaseUrl,
        serviceApiKey: KEY,
        streamFlushMs: 0,
      });
      try {
        const counts: number[] = [];
        for (const target of [plain, server]) {
          const d = await target.connectAs(uid);
          const chatId = await chatOpenOn(d, [d]);
          const rec = recordEvents(d);
          const q = serviceClient(target.url, KEY);
          const started = await q.post<{ stream: { streamId: string } }>(
            `/users/${uid}/chats/${chatId}/streams`,
            {},
          );
          const s = `/streams/${started.body.stream.streamId}`;
          // Five calls of ten chunks (a backend batching its tokens).
          for (let call = 0; call < 5; call++) {
            const chunks = Array.from({ length: 10 }, (_, k) => ({
              index: call * 10 + k,
              delta: `t${call * 10 + k} `,
            }));
            expect((await q.post(`${s}/chunks`, { chunks })).status).toBe(200);
          }
          expect((await q.post(`${s}/finish`, {})).status).toBe(201);
          await eventually(() => expect(rec.of("message:created")).toHaveLength(1));
          const deltas = rec.of<MessageDelta>("message:delta");
          expect(streamedText(deltas)).toBe(
            Array.from({ length: 50 }, (_, k) => `t${k} `).join(""),
          );
          counts.push(deltas.length);
          // Every delta came before the stored message.
          const names = rec.events.map((e) => e.name).filter((n) => n.startsWith("message:"));
          expect(names.at(-1)).toBe("message:created");
        }
        expect(counts[0]).toBe(50);
        expect(counts[1]).toBeLessThanOrEqual(5);
      } finally {
        await plain.close();
      }
    });
  });
}

/**
 * The service-role HTTP API against a real server, real Postgres and real sockets: auth,
 * validation, posting replies, streaming (live on two devices, stored once, failed, abandoned),
 * token usage, searches and the read endpoints.
 */
import type postgres from "postgres";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import {
  type ChatMessage,
  type ChatSummary,
  Limits,
  type MessageDelta,
  type MessageStreamFailed,
  type MessageStreaming,
  type UserStats,
} from "../../protocol/index.js";
import { eventually, recordEvents, startTestServer, type TestServer } from "../helpers/server.js";
import { ok, openSql, userId } from "../realtime/support.js";
import {
  chatOpenOn,
  errorOf,
  http,
  newServiceKey,
  newSigningSecret,
  serviceClient,
  streamedText,
} from "./support.js";

const KEY = newServiceKey();
let server: TestServer;
/** Same database, streams abandoned after 300 ms. */
let quick: TestServer;
let sql: postgres.Sql;
let api: ReturnType<typeof serviceClient>;

beforeAll(async () => {
  server = await startTestServer({ serviceApiKey: KEY });
  quick = await startTestServer({
    databaseUrl: server.databaseUrl,
    serviceApiKey: KEY,
    streamTimeoutMs: 300,
  });
  sql = openSql(server.databaseUrl);
  api = serviceClient(server.url, KEY);
});
afterAll(async () => {
  await sql?.end({ timeout: 5 });
  await quick?.close();
  await server?.close();
});

type Posted = { message: ChatMessage; duplicate: boolean };

describe("authentication", () => {
  test("refuses a missing, wrong or differently shaped key with 401, before routing", async () => {
    const uid = userId("auth");
    await server.connectAs(uid);
    const path = `${server.url}/service/v1/users/${uid}/stats`;

    const none = await http(path);
    expect(none.status).toBe(401);
    expect(errorOf(none).code).toBe("UNAUTHORIZED");
    expect(none.headers.get("www-authenticate")).toBe("Bearer");

    for (const authorization of [
      `Bearer ${newServiceKey()}`, // same length, other key
      `Bearer ${KEY}x`, // longer
      `Bearer ${KEY.slice(0, 10)}`, // shorter
      `Basic ${Buffer.from(`x:${KEY}`).toString("base64")}`,
      KEY,
    ]) {
      const res = await http(path, { headers: { authorization } });
      expect(res.status, authorization).toBe(401);
      expect(errorOf(res).code).toBe("UNAUTHORIZED");
    }
    // Unknown routes too: nothing is revealed without the key.
    const unknown = await http(`${server.url}/service/v1/nope`, { method: "POST", body: "{}" });
    expect(unknown.status).toBe(401);

    const good = await api.get<{ stats: UserStats }>(`/users/${uid}/stats`);
    expect(good.status).toBe(200);
    expect(good.body.stats.messageCount).toBe(0);

    const missing = await api.get("/nope");
    expect(missing.status).toBe(404);
    expect(errorOf(missing).code).toBe("NOT_FOUND");
  });

  test("without a key the API does not exist, and without a secret neither do webhooks", async () => {
    const bare = await startTestServer({ databaseUrl: server.databaseUrl });
    try {
      const res = await http(`${bare.url}/service/v1/users/user_x/stats`, {
        headers: { authorization: `Bearer ${KEY}` },
      });
      expect(res.status).toBe(404);
      expect(errorOf(res).code).toBe("NOT_FOUND");
    } finally {
      await bare.close();
    }
    // This server has the API but no webhook secret.
    const hook = await http(`${server.url}/webhooks/clerk`, {
      method: "POST",
      headers: { "svix-id": "x", "svix-timestamp": "1", "svix-signature": "v1,x" },
      body: "{}",
    });
    expect(hook.status).toBe(404);
    expect(newSigningSecret()).toMatch(/^whsec_/);
  });
});

describe("unavailable", () => {
  test("a database that cannot be reached is 503 UNAVAILABLE, with nothing internal", async () => {
    const cut = await startTestServer({ databaseUrl: server.databaseUrl, serviceApiKey: KEY });
    try {
      await cut.database.sql.end({ timeout: 1 }); // the node's pool is gone
      const c = serviceClient(cut.url, KEY);
      for (const res of [
        await c.post(`/users/${userId("cut")}/token-usage`, { tokens: 1 }),
        await c.get(`/users/${userId("cut")}/stats`),
      ]) {
        expect(res.status).toBe(503);
        expect(errorOf(res)).toEqual({
          code: "UNAVAILABLE",
          message: "The service is temporarily unavailable; retry",
        });
      }
    } finally {
      await cut.close();
    }
  });
});

describe("posting a message", () => {
  test("stores it once per clientId and broadcasts it live to the chat's devices", async () => {
    const uid = userId("post");
    const a = await server.connectAs(uid);
    const b = await server.connectAs(uid);
    const chatId = await chatOpenOn(a, [a, b]);
    const [recA, recB] = [recordEvents(a), recordEvents(b)];
    const path = `/users/${uid}/chats/${chatId}/messages`;

    const first = await api.post<Posted>(path, { clientId: "reply-1", content: "Hi, I can help" });
    expect(first.status).toBe(201);
    expect(first.body.duplicate).toBe(false);
    expect(first.body.message).toMatchObject({
      chatId,
      seq: 1,
      clientId: "reply-1",
      role: "assistant",
      content: "Hi, I can help",
    });

    const again = await api.post<Posted>(path, { clientId: "reply-1", content: "Hi, I can help" });
    expect(again.status).toBe(200);
    expect(again.body).toEqual({ message: first.body.message, duplicate: true });

    const reused = await api.post(path, { clientId: "reply-1", content: "Something else" });
    expect(reused.status).toBe(409);
    expect(errorOf(reused).code).toBe("CONFLICT");

    const note = await api.post<Posted>(path, {
      clientId: "note-1",
      role: "system",
      content: "Search finished",
    });
    expect(note.status).toBe(201);
    expect(note.body.message).toMatchObject({ seq: 2, role: "system" });

    await eventually(() => {
      for (const rec of [recA, recB]) {
        const created = rec.of<{ message: ChatMessage }>("message:created").map((e) => e.message);
        expect(created).toEqual([first.body.message, note.body.message]);
        const sidebar = rec.of<{ chat: ChatSummary }>("chat:updated").map((e) => e.chat);
        expect(sidebar.at(-1)).toMatchObject({
          id: chatId,
          lastSeq: 2,
          lastMessage: { role: "system", content: "Search finished" },
        });
      }
    });
    const rows = await sql<{ client_id: string; message: unknown }[]>`
      select client_id, message from chat_memory where session_id = ${chatId} order by seq`;
    expect(rows).toEqual([
      { client_id: "reply-1", message: { role: "assistant", content: "Hi, I can help" } },
      { client_id: "note-1", message: { role: "system", content: "Search finished" } },
    ]);
  });

  test("refuses bad input with 400/404/413 and stores nothing", async () => {
    const uid = userId("badpost");
    const other = userId("other");
    const s = await server.connectAs(uid);
    const o = await server.connectAs(other);
    const { chat } = await ok(s, "chat:create", { title: "Mine" });
    const { chat: theirs } = await ok(o, "chat:create", { title: "Theirs" });
    const path = `/users/${uid}/chats/${chat.id}/messages`;

    const cases: [unknown, string][] = [
      [{ clientId: "c1" }, "content"],
      [{ clientId: "c1", content: "   " }, "content"],
      [{ clientId: "c1", content: "x", role: "user" }, "role"],
      [{ clientId: "has space", content: "x" }, "clientId"],
      [{ clientId: "c1", content: "x", extra: 1 }, ""],
      [{ clientId: "c1", content: "a\u0000b" }, "content"],
      [[1, 2], ""],
    ];
    for (const [body, field] of cases) {
      const res = await api.post(path, body);
      expect(res.status, JSON.stringify(body)).toBe(400);
      const error = errorOf(res);
      expect(error.code).toBe("INVALID_PAYLOAD");
      if (field) expect(error.details?.map((d) => d.path)).toContain(field);
    }

    const notJson = await api.call("POST", path, "{not json", {
      "content-type": "application/json",
    });
    expect(notJson.status).toBe(400);
    expect(errorOf(notJson).message).toMatch(/JSON/);

    const badChat = await api.post(`/users/${uid}/chats/not-a-uuid/messages`, {
      clientId: "c1",
      content: "x",
    });
    expect(badChat.status).toBe(400);
    expect(errorOf(badChat).details).toEqual([{ path: "chatId", message: "must be a UUID" }]);

    const noUser = await api.post(`/users/${userId("ghost")}/chats/${chat.id}/messages`, {
      clientId: "c1",
      content: "x",
    });
    expect(noUser.status).toBe(404);
    expect(errorOf(noUser).message).toBe("User not found");

    const notTheirs = await api.post(`/users/${uid}/chats/${theirs.id}/messages`, {
      clientId: "c1",
      content: "x",
    });
    expect(notTheirs.status).toBe(404);
    expect(errorOf(notTheirs).message).toBe("Chat not found");

    const huge = await api.post(path, { clientId: "c1", content: "x".repeat(1024 * 1024 + 1) });
    expect(huge.status).toBe(413);
    expect(errorOf(huge).code).toBe("INVALID_PAYLOAD");

    const [row] = await sql<{ n: number }[]>`
      select count(*)::int as n from chat_memory where session_id in (${chat.id}, ${theirs.id})`;
    expect(row?.n).toBe(0);
  });
});

type StreamBody = {
  stream: { streamId: string; status: string; nextIndex: number; chatId: string };
  created: boolean;
};

describe("streaming a reply", () => {
  test("two devices see it live, it is stored exactly once, retries are harmless", async () => {
    const uid = userId("stream");
    const a = await server.connectAs(uid);
    const b = await server.connectAs(uid);
    const chatId = await chatOpenOn(a, [a, b]);
    const [recA, recB] = [recordEvents(a), recordEvents(b)];

    const started = await api.post<StreamBody>(`/users/${uid}/chats/${chatId}/streams`, {});
    expect(started.status).toBe(201);
    const { streamId } = started.body.stream;
    expect(started.body.stream).toMatchObject({ chatId, status: "active", nextIndex: 0 });
    const s = `/streams/${streamId}`;

    expect((await api.post(`${s}/chunks`, { index: 0, delta: "Hel" })).body).toEqual({
      streamId,
      nextIndex: 1,
      applied: 1,
    });
    const batch = await api.post(`${s}/chunks`, {
      chunks: [
        { index: 1, delta: "lo" },
        { index: 2, delta: ", wor" },
      ],
    });
    expect(batch.body).toEqual({ streamId, nextIndex: 3, applied: 2 });
    // A retried chunk is skipped; a partly retried batch applies only what is new.
    expect((await api.post(`${s}/chunks`, { index: 1, delta: "lo" })).body).toMatchObject({
      applied: 0,
      nextIndex: 3,
    });
    const partly = await api.post(`${s}/chunks`, {
      chunks: [
        { index: 2, delta: ", wor" },
        { index: 3, delta: "ld" },
      ],
    });
    expect(partly.body).toMatchObject({ applied: 1, nextIndex: 4 });
    const gap = await api.post(`${s}/chunks`, { index: 9, delta: "!" });
    expect(gap.status).toBe(409);
    expect(errorOf(gap).details).toEqual([{ path: "index", message: "expected 4" }]);
    const unordered = await api.post(`${s}/chunks`, {
      chunks: [
        { index: 4, delta: "a" },
        { index: 6, delta: "b" },
      ],
    });
    expect(unordered.status).toBe(400);

    // Coalesced (default 40 ms): fewer deltas than chunks maybe, but the same text, by offset.
    await eventually(() => {
      for (const rec of [recA, recB]) {
        expect(rec.of<MessageStreaming>("message:streaming")).toEqual([
          { streamId, chatId, role: "assistant", startedAt: expect.any(String) },
        ]);
        const deltas = rec.of<MessageDelta>("message:delta");
        for (const d of deltas) expect(d).toMatchObject({ streamId, chatId });
        expect(deltas[0]).toMatchObject({ index: 0, offset: 0 });
        expect(streamedText(deltas)).toBe("Hello, world");
      }
    });

    const finished = await api.post<Posted>(`${s}/finish`, {});
    expect(finished.status).toBe(201);
    expect(finished.body.message).toMatchObject({
      chatId,
      clientId: streamId,
      role: "assistant",
      content: "Hello, world",
      seq: 1,
    });
    const again = await api.post<Posted>(`${s}/finish`, {});
    expect(again.status).toBe(200);
    expect(again.body).toEqual({ message: finished.body.message, duplicate: true });

    const late = await api.post(`${s}/chunks`, { index: 4, delta: "!" });
    expect(late.status).toBe(409);
    expect(errorOf(late).message).toMatch(/finished/);
    expect((await api.post(`${s}/fail`, {})).status).toBe(409);
    expect((await api.get<{ stream: { status: string } }>(s)).body.stream.status).toBe("finished");

    await eventually(() => {
      for (const rec of [recA, recB]) {
        expect(rec.of<{ message: ChatMessage }>("message:created")).toEqual([
          { message: finished.body.message },
        ]);
      }
    });
    const rows = await sql<{ client_id: string; message: unknown }[]>`
      select client_id, message from chat_memory where session_id = ${chatId}`;
    expect(rows).toEqual([
      { client_id: streamId, message: { role: "assistant", content: "Hello, world" } },
    ]);
    expect(recA.of("message:failed")).toEqual([]);
  });

  test("start is idempotent per streamId; finish can give the final text; checks inputs", async () => {
    const uid = userId("stream2");
    const a = await server.connectAs(uid);
    const chatId = await chatOpenOn(a, [a]);
    const rec = recordEvents(a);
    const start = (body: unknown) =>
      api.post<StreamBody>(`/users/${uid}/chats/${chatId}/streams`, body);

    const first = await start({ streamId: "gen-42", role: "assistant" });
    expect(first.status).toBe(201);
    const retry = await start({ streamId: "gen-42" });
    expect(retry.status).toBe(200);
    expect(retry.body.created).toBe(false);
    const clash = await start({ streamId: "gen-42", role: "system" });
    expect(clash.status).toBe(409);

    expect((await start({ streamId: "bad id" })).status).toBe(400);
    expect((await start({ role: "user" })).status).toBe(400);
    const otherChat = await api.post(
      `/users/${uid}/chats/00000000-0000-4000-8000-000000000000/streams`,
      {},
    );
    expect(otherChat.status).toBe(404);
    expect(
      (await api.post("/streams/unknown-stream/chunks", { index: 0, delta: "x" })).status,
    ).toBe(404);

    // Nothing appended and no content: nothing to store, and the stream stays usable.
    const empty = await api.post("/streams/gen-42/finish", {});
    expect(empty.status).toBe(400);
    expect(errorOf(empty).message).toMatch(/no content/);
    expect((await api.post("/streams/gen-42/chunks", { index: 0, delta: "draft" })).status).toBe(
      200,
    );
    const tooLong = await api.post("/streams/gen-42/chunks", {
      index: 1,
      delta: "y".repeat(64_000),
    });
    expect(tooLong.status).toBe(400);

    const done = await api.post<Posted>("/streams/gen-42/finish", { content: "Final answer" });
    expect(done.status).toBe(201);
    expect(done.body.message).toMatchObject({ clientId: "gen-42", content: "Final answer" });
    const dup = await api.post<Posted>("/streams/gen-42/finish", {});
    expect(dup.body).toEqual({ message: done.body.message, duplicate: true });

    await eventually(() => {
      expect(rec.of<MessageStreaming>("message:streaming")).toHaveLength(1);
      expect(rec.of<MessageDelta>("message:delta").map((d) => d.delta)).toEqual(["draft"]);
      expect(
        rec.of<{ message: ChatMessage }>("message:created").map((e) => e.message.content),
      ).toEqual(["Final answer"]);
    });
  });

  test("a failed stream is broadcast as failed and stores nothing", async () => {
    const uid = userId("streamfail");
    const a = await server.connectAs(uid);
    const b = await server.connectAs(uid);
    const chatId = await chatOpenOn(a, [a, b]);
    const [recA, recB] = [recordEvents(a), recordEvents(b)];

    const { body } = await api.post<StreamBody>(`/users/${uid}/chats/${chatId}/streams`, {});
    const s = `/streams/${body.stream.streamId}`;
    await api.post(`${s}/chunks`, { index: 0, delta: "Partial" });
    const failed = await api.post<{ stream: { status: string; failure: unknown } }>(`${s}/fail`, {
      message: "The model provider timed out",
    });
    expect(failed.status).toBe(200);
    expect(failed.body.stream).toMatchObject({
      status: "failed",
      failure: { reason: "FAILED", message: "The model provider timed out" },
    });
    expect((await api.post(`${s}/fail`, {})).status).toBe(200); // idempotent
    expect((await api.post(`${s}/finish`, {})).status).toBe(409);
    expect((await api.post(`${s}/chunks`, { index: 1, delta: "x" })).status).toBe(409);

    const expected: MessageStreamFailed = {
      streamId: body.stream.streamId,
      chatId,
      reason: "FAILED",
      message: "The model provider timed out",
    };
    await eventually(() => {
      for (const rec of [recA, recB]) expect(rec.of("message:failed")).toEqual([expected]);
    });
    expect(recA.of("message:created")).toEqual([]);
    const [row] = await sql<{ n: number }[]>`
      select count(*)::int as n from chat_memory where session_id = ${chatId}`;
    expect(row?.n).toBe(0);
  });

  test("a stream abandoned mid-way is marked failed and broadcast, never left dangling", async () => {
    const uid = userId("abandon");
    const a = await quick.connectAs(uid);
    const chatId = await chatOpenOn(a, [a]);
    const rec = recordEvents(a);
    const q = serviceClient(quick.url, KEY);

    const { body } = await q.post<StreamBody>(`/users/${uid}/chats/${chatId}/streams`, {});
    const { streamId } = body.stream;
    await q.post(`/streams/${streamId}/chunks`, { index: 0, delta: "Thinking" });

    const failed = await eventually(() => {
      const events = rec.of<MessageStreamFailed>("message:failed");
      expect(events).toEqual([
        { streamId, chatId, reason: "ABANDONED", message: expect.stringMatching(/abandoned/) },
      ]);
      return events[0];
    }, 5000);
    expect(failed?.reason).toBe("ABANDONED");
    const state = await q.get<{ stream: { status: string; failure: { reason: string } } }>(
      `/streams/${streamId}`,
    );
    expect(state.body.stream).toMatchObject({ status: "failed", failure: { reason: "ABANDONED" } });
    const late = await q.post(`/streams/${streamId}/finish`, {});
    expect(late.status).toBe(409);
    expect(errorOf(late).message).toMatch(/failed/);
    expect(rec.of("message:created")).toEqual([]);
    const [row] = await sql<{ n: number }[]>`
      select count(*)::int as n from chat_memory where session_id = ${chatId}`;
    expect(row?.n).toBe(0);
  });
});

describe("token usage and searches", () => {
  test("token usage adds up in a bigint, goes live, and refuses overflow and bad amounts", async () => {
    const uid = userId("tokens");
    const a = await server.connectAs(uid);
    const rec = recordEvents(a);
    const path = `/users/${uid}/token-usage`;

    expect((await api.post(path, { tokens: 1500 })).body).toEqual({ tokenUsage: 1500 });
    const big = 2 ** 40;
    expect((await api.post(path, { tokens: big })).body).toEqual({ tokenUsage: big + 1500 });
    await eventually(() => {
      const last = rec.of<{ stats: UserStats }>("stats:updated").at(-1);
      expect(last?.stats.tokenUsage).toBe(big + 1500);
    });

    for (const tokens of [0, -5, 1.5, "10", null, 2 ** 53, 1e30]) {
      const res = await api.post(path, { tokens });
      expect(res.status, String(tokens)).toBe(400);
      expect(errorOf(res).details?.[0]?.path).toBe("tokens");
    }
    expect((await api.post(path, {})).status).toBe(400);

    const max = Number.MAX_SAFE_INTEGER;
    await sql`update users set token_usage = ${String(max - 10)}::bigint where clerk_id = ${uid}`;
    const over = await api.post(path, { tokens: 11 });
    expect(over.status).toBe(409);
    expect(errorOf(over).message).toMatch(/exceed 9007199254740991/);
    expect((await api.post(path, { tokens: 10 })).body).toEqual({ tokenUsage: max });
    expect((await api.post(path, { tokens: 1 })).status).toBe(409);
    const [row] = await sql<{ t: string }[]>`
      select token_usage::text as t from users where clerk_id = ${uid}`;
    expect(row?.t).toBe("9007199254740991");
    await eventually(() => {
      expect(rec.of<{ stats: UserStats }>("stats:updated").at(-1)?.stats.tokenUsage).toBe(max);
    });

    const ghost = await api.post(`/users/${userId("ghost")}/token-usage`, { tokens: 1 });
    expect(ghost.status).toBe(404);
  });

  test("a recorded search is stored, bumps total_searches and goes live", async () => {
    const uid = userId("search");
    const a = await server.connectAs(uid);
    const rec = recordEvents(a);
    const path = `/users/${uid}/searches`;

    const res = await api.post<{ search: { id: string; resultsCount: number; status: string } }>(
      path,
      {
        filters: { query: "flights to Lisbon", maxPrice: 200 },
        results: [{ id: "r1" }, { id: "r2" }],
        status: "completed",
      },
    );
    expect(res.status).toBe(201);
    expect(res.body.search).toMatchObject({ resultsCount: 2, status: "completed" });
    const none = await api.post<{ search: { resultsCount: number } }>(path, {
      filters: { query: "unicorns" },
      results: [],
      status: "no_results",
    });
    expect(none.body.search.resultsCount).toBe(0);

    await eventually(() => {
      expect(rec.of<{ stats: UserStats }>("stats:updated").at(-1)?.stats.totalSearches).toBe(2);
    });
    const rows = await sql<
      { filters: unknown; results: unknown; results_count: number; status: string }[]
    >`
      select s.filters, s.results, s.results_count, s.status from search_sessions s
        join users u on u.id = s.user_id where u.clerk_id = ${uid} order by s.created_at, s.id`;
    expect(rows).toContainEqual({
      filters: { query: "flights to Lisbon", maxPrice: 200 },
      results: [{ id: "r1" }, { id: "r2" }],
      results_count: 2,
      status: "completed",
    });
    expect(rows).toHaveLength(2);

    for (const body of [
      { filters: {}, results: [], status: "done" },
      { filters: {}, results: [1], status: "no_results" },
      { filters: {}, results: { page: 1 }, status: "completed" }, // count required
      { filters: "q", results: [], status: "completed" },
      { filters: {}, results: [], resultsCount: -1, status: "completed" },
    ]) {
      const bad = await api.post(path, body);
      expect(bad.status, JSON.stringify(body)).toBe(400);
      expect(errorOf(bad).code).toBe("INVALID_PAYLOAD");
    }
    const ghost = await api.post(`/users/${userId("ghost")}/searches`, {
      filters: {},
      results: [],
      status: "failed",
    });
    expect(ghost.status).toBe(404);
    const [u] = await sql<{ total_searches: number }[]>`
      select total_searches from users where clerk_id = ${uid}`;
    expect(u?.total_searches).toBe(2);
  });
});

describe("reading", () => {
  type ChatPage = { chats: ChatSummary[]; nextCursor: string | null };

  /** Every page of the user's chats, following nextCursor (bounded: at most 100 pages). */
  async function allPages(uid: string, query: string) {
    const pages: ChatPage[] = [];
    let cursor: string | null = null;
    for (let i = 0; i < 100; i++) {
      const q: string = cursor ? `${query}&cursor=${encodeURIComponent(cursor)}` : query;
      const res: { status: number; body: ChatPage } = await api.get<ChatPage>(
        `/users/${uid}/chats?${q}`,
      );
      expect(res.status, JSON.stringify(res.body)).toBe(200);
      pages.push(res.body);
      cursor = res.body.nextCursor;
      if (!cursor) break;
    }
    return pages;
  }

  test("the chat list is paged: limit 1–200 (default 50), nextCursor, latest activity first", async () => {
    const uid = userId("chat_pages");
    const a = await server.connectAs(uid);
    await ok(a, "chat:create", { title: "first" });
    await sql`
      insert into chat_sessions (user_id, title)
      select u.id, 'chat ' || g from users u, generate_series(1, 54) g
       where u.clerk_id = ${uid}`;
    const fromDb = await sql<{ session_id: string }[]>`
      select session_id from get_user_chat_history(${uid})`;
    expect(fromDb).toHaveLength(55);

    const first = await api.get<ChatPage>(`/users/${uid}/chats`);
    expect(first.status).toBe(200);
    expect(first.body.chats).toHaveLength(50);
    expect(typeof first.body.nextCursor).toBe("string");

    const pages = await allPages(uid, "limit=7");
    expect(pages.map((p) => p.chats.length)).toEqual([7, 7, 7, 7, 7, 7, 7, 6]);
    expect(pages.at(-1)?.nextCursor).toBeNull();
    const ids = pages.flatMap((p) => p.chats.map((c) => c.id));
    expect(ids).toEqual(fromDb.map((r) => r.session_id));

    const all = await api.get<ChatPage>(`/users/${uid}/chats?limit=200`);
    expect(all.body.chats.map((c) => c.id)).toEqual(ids);
    expect(all.body.nextCursor).toBeNull();
  });

  test("a page of chats stops at 1 MiB of JSON and still pages to the end", async () => {
    const uid = userId("chat_bytes");
    await server.connectAs(uid);
    // Previews of 64,000 characters that take six bytes each as JSON: three pass 1 MiB.
    const awkward = "\u0001".repeat(Limits.MAX_MESSAGE_CHARS);
    await sql`
      insert into chat_sessions (user_id, title, last_message)
      select u.id, 'big ' || g, ${sql.json({ role: "user", content: awkward })}
        from users u, generate_series(1, 6) g
       where u.clerk_id = ${uid}`;
    const pages = await allPages(uid, "limit=200");
    expect(pages.length).toBeGreaterThan(1);
    for (const p of pages) {
      expect(p.chats.length).toBeGreaterThanOrEqual(1);
      expect(Buffer.byteLength(JSON.stringify(p.chats))).toBeLessThanOrEqual(Limits.MAX_PAGE_BYTES);
    }
    expect(new Set(pages.flatMap((p) => p.chats.map((c) => c.id))).size).toBe(6);
  });

  test("a bad limit or cursor is a 400 that names it; an unknown user is a 404", async () => {
    const uid = userId("chat_bad_query");
    await server.connectAs(uid);
    for (const [query, path] of [
      ["limit=0", "limit"],
      ["limit=201", "limit"],
      ["limit=-1", "limit"],
      ["limit=abc", "limit"],
      ["limit=", "limit"],
      ["cursor=", "cursor"],
      [`cursor=${"x".repeat(201)}`, "cursor"],
      ["cursor=bm90LWEtY3Vyc29y", "cursor"],
      ["offset=10", "offset"],
    ] as const) {
      const bad = await api.get(`/users/${uid}/chats?${query}`);
      expect(bad.status, query).toBe(400);
      const error = errorOf(bad);
      expect(error.code, query).toBe("INVALID_PAYLOAD");
      // The field is the detail's path, or (an unknown one) named in its message.
      expect(
        error.details?.some((d) => d.path === path || d.message.includes(`"${path}"`)),
        `${query}: ${JSON.stringify(error)}`,
      ).toBe(true);
    }
    const ghost = await api.get(`/users/${userId("ghost")}/chats?limit=5`);
    expect(ghost.status).toBe(404);
  });

  test("chat history, messages and stats match what is stored", async () => {
    const uid = userId("reader");
    const a = await server.connectAs(uid);
    const { chat: older } = await ok(a, "chat:create", { title: "Older" });
    const { chat: newer } = await ok(a, "chat:create", { title: "Newer" });
    await ok(a, "message:send", { chatId: older.id, clientId: "u1", content: "Question" });
    await api.post(`/users/${uid}/chats/${older.id}/messages`, {
      clientId: "a1",
      content: "Answer",
    });

    const history = await api.get<{ chats: ChatSummary[]; nextCursor: string | null }>(
      `/users/${uid}/chats`,
    );
    expect(history.status).toBe(200);
    expect(Object.keys(history.body).sort()).toEqual(["chats", "nextCursor"]);
    expect(history.body.nextCursor).toBeNull();
    // The same entries as the user's own devices get from chat:list.
    expect(history.body.chats).toEqual((await ok(a, "chat:list", {})).chats);
    const fromDb = await sql<{ session_id: string; title: string }[]>`
      select session_id, title from get_user_chat_history(${uid})`;
    expect(history.body.chats.map((c) => [c.id, c.title])).toEqual(
      fromDb.map((r) => [r.session_id, r.title]),
    );
    expect(history.body.chats[0]).toMatchObject({
      id: older.id,
      lastMessage: { role: "assistant", content: "Answer" },
    });
    expect(history.body.chats[1]).toMatchObject({ id: newer.id, lastMessage: null });

    const page = await api.get<{ messages: ChatMessage[]; hasMore: boolean }>(
      `/users/${uid}/chats/${older.id}/messages?limit=1`,
    );
    expect(page.body.hasMore).toBe(true);
    expect(page.body.messages.map((m) => m.content)).toEqual(["Answer"]);
    const after = await api.get<{ messages: ChatMessage[] }>(
      `/users/${uid}/chats/${older.id}/messages?after=0`,
    );
    expect(after.body.messages.map((m) => [m.seq, m.role])).toEqual([
      [1, "user"],
      [2, "assistant"],
    ]);
    for (const query of ["before=1&after=1", "limit=0", "limit=201", "after=-1", "foo=1"]) {
      const bad = await api.get(`/users/${uid}/chats/${older.id}/messages?${query}`);
      expect(bad.status, query).toBe(400);
    }

    const stats = await api.get<{ stats: UserStats }>(`/users/${uid}/stats`);
    const own = await ok(a, "user:stats", {});
    expect(stats.body.stats).toEqual(own.stats);
    expect(stats.body.stats).toMatchObject({ totalConversations: 2, messageCount: 2 });

    for (const path of [`/users/${userId("ghost")}/chats`, `/users/${userId("ghost")}/stats`]) {
      const res = await api.get(path);
      expect(res.status).toBe(404);
    }
  });
});

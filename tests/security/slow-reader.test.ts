/**
 * Answers too big to buffer, and clients that do not read them, against a real server and
 * Postgres. A hostile raw client (a bare WebSocket speaking Engine.IO/Socket.IO by hand) fills
 * its chats with the most awkward messages there are (64,000 characters of U+0001, six bytes
 * each as JSON), stops reading its socket while it keeps sending heartbeats, and fires
 * `chat:open`, `message:history` and `chat:list` for the largest pages it may ask for. The node
 * must disconnect it (SLOW_CONSUMER), keep its own memory bounded, and keep serving a bystander
 * promptly. Also: pages are bounded by bytes (and still page to the end), a socket's commands in
 * progress are capped, and a read whose command timed out (or whose socket left) while it
 * waited for its turn is not started.
 */
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { type Ack, type ChatMessage, Limits } from "../../protocol/index.js";
import { MessageRepository } from "../../server/src/repositories/message.repository.js";
import { adminUrl } from "../helpers/db.js";
import {
  type ClientSocket,
  eventually,
  startTestServer,
  type TestServer,
  tokenFor,
} from "../helpers/server.js";
import { openSql, userId } from "../realtime/support.js";
import { newServiceKey, serviceClient } from "../service/support.js";
import { heapUsed, measureDuring, percentiles, RawSocket, waitingReads } from "./hostile.js";

const P95_BOUND_MS = 500;
/** Heap plus Buffers (what the node holds for sockets lives in Buffers, outside the heap). */
const MEMORY_GROWTH_BOUND = 64 * 1024 * 1024;
/** The same at its peak, sampled during the attack without collecting garbage first. */
const PEAK_GROWTH_BOUND = 128 * 1024 * 1024;
/** 64,000 characters that are six bytes each as JSON. */
const AWKWARD = "\u0001".repeat(Limits.MAX_MESSAGE_CHARS);

const KEY = newServiceKey();
let server: TestServer;
let sql: postgres.Sql;

beforeAll(async () => {
  server = await startTestServer({ serviceApiKey: KEY });
  sql = openSql(server.databaseUrl);
});
afterAll(async () => {
  await sql?.end({ timeout: 5 });
  await server?.close();
});

/** Heap (after garbage collection) plus the memory of Buffers, in bytes. */
async function memoryInUse(): Promise<number> {
  const heap = await heapUsed();
  return heap + process.memoryUsage().external;
}

/** The `users.id` of a user that has connected once. */
async function dbUserId(clerkId: string): Promise<string> {
  const [row] = await sql<{ id: string }[]>`select id from users where clerk_id = ${clerkId}`;
  if (!row) throw new Error(`no users row for ${clerkId}`);
  return row.id;
}

/** `count` chats of the user, each with `perChat` awkward messages (their previews too). */
async function awkwardChats(owner: string, count: number, perChat: number): Promise<string[]> {
  const rows = await sql<{ id: string }[]>`
    insert into chat_sessions (user_id, title)
    select ${owner}, 'awkward ' || g from generate_series(1, ${count}) g returning id`;
  for (const { id } of rows) {
    await sql`
      insert into chat_memory (session_id, client_id, message)
      select ${id}, 'awkward-' || g, jsonb_build_object('role', 'user', 'content', ${AWKWARD}::text)
        from generate_series(1, ${perChat}) g`;
  }
  return rows.map((r) => r.id);
}

async function rawClient(clerkId: string): Promise<RawSocket> {
  const raw = new RawSocket(server.url);
  await raw.connect({ token: await tokenFor(clerkId) });
  await eventually(() => {
    if (!raw.frames.some((f) => f.startsWith("40"))) throw new Error("not connected yet");
  });
  return raw;
}

const bytes = (x: unknown) => Buffer.byteLength(JSON.stringify(x));

describe("a client that stops reading", () => {
  test("is disconnected SLOW_CONSUMER; the node's memory stays bounded and a bystander is served promptly", async () => {
    const hostileId = userId("slow_reader");
    const raw = await rawClient(hostileId);
    // It fills its chats: a few awkward messages through the socket itself, the bulk (the
    // same rows) straight into the database to keep the test short.
    const chatId = (await awkwardChats(await dbUserId(hostileId), 1, 0))[0] as string;
    for (let i = 0; i < 3; i++) {
      raw.command(i + 1, "message:send", { chatId, clientId: `sent-${i}`, content: AWKWARD });
      expect(await raw.ack(i + 1)).toMatchObject({ ok: true });
    }
    await sql`
      insert into chat_memory (session_id, client_id, message)
      select ${chatId}, 'bulk-' || g, jsonb_build_object('role', 'user', 'content', ${AWKWARD}::text)
        from generate_series(1, 197) g`;
    await awkwardChats(await dbUserId(hostileId), 60, 1);

    const bystander = await server.connectAs(userId("bystander"));
    expect((await bystander.emitWithAck("chat:create", { title: "still here" })).ok).toBe(true);
    const before = await memoryInUse();

    // Stop reading; keep the heartbeat going, so only the server's own decision ends it.
    raw.pauseReading();
    const heartbeat = setInterval(() => raw.isOpen && raw.send("3"), 2000);
    let peak = before;
    // (`?.`: so that this test also runs, and fails, against a server without the limit.)
    const slowCount = async () =>
      (await server.app.metrics.slowConsumers?.get())?.values[0]?.value ?? 0;
    const initial = await slowCount();
    expect(server.app.io.engine.clientsCount).toBe(2);
    const attack = (async () => {
      let id = 100;
      // Bounded: rounds of 12 commands every 100 ms, for at most 30 s, until the server lets
      // the socket go (or the node's memory runs away, as it did before the limits).
      const deadline = Date.now() + 30_000;
      for (let round = 0; Date.now() < deadline; round++) {
        if (server.app.io.engine.clientsCount < 2) return { rounds: round };
        if (peak - before > 2 * PEAK_GROWTH_BOUND) return { rounds: "memory ran away" };
        for (let i = 0; i < 4; i++) {
          raw.command(id++, "chat:open", { chatId, limit: Limits.MAX_PAGE_SIZE });
          raw.command(id++, "message:history", { chatId, limit: Limits.MAX_PAGE_SIZE });
          raw.command(id++, "chat:list", { limit: Limits.MAX_PAGE_SIZE });
        }
        const m = process.memoryUsage();
        peak = Math.max(peak, m.heapUsed + m.external);
        await new Promise((r) => setTimeout(r, 100));
      }
      return { rounds: "never disconnected" };
    })();
    const { latencies, failures, floodResult } = await measureDuring(bystander, attack);
    clearInterval(heartbeat);

    // The server disconnected it, on its own, for not reading.
    expect(floodResult).toEqual({ rounds: expect.any(Number) });
    expect((await slowCount()) - initial).toBe(1);
    await eventually(() => expect(server.app.io.engine.clientsCount).toBe(1));
    raw.terminate();

    const after = await memoryInUse();
    const { n, median, p95 } = percentiles(latencies);
    const mb = (b: number) => Math.round((b / 1024 / 1024) * 10) / 10;
    console.log(
      `[slow reader] disconnected after ${(floodResult as { rounds: number }).rounds} rounds; bystander n=${n} median=${median} ms p95=${p95} ms; memory ${mb(before)} MB -> peak ${mb(peak)} MB -> ${mb(after)} MB`,
    );
    expect(failures).toEqual([]);
    expect(n).toBeGreaterThanOrEqual(5);
    expect(p95).toBeLessThan(P95_BOUND_MS);
    expect(peak - before).toBeLessThan(PEAK_GROWTH_BOUND);
    expect(after - before).toBeLessThan(MEMORY_GROWTH_BOUND);
    expect(bystander.connected).toBe(true);
  }, 60_000);
});

describe("pages are bounded by bytes", () => {
  let owner: ClientSocket;
  let chatId: string;
  const TOTAL = 10;

  beforeAll(async () => {
    const clerkId = userId("big_pages");
    owner = await server.connectAs(clerkId);
    const owned = await dbUserId(clerkId);
    chatId = (await awkwardChats(owned, 1, TOTAL))[0] as string;
    await awkwardChats(owned, 7, 1);
  });

  test("chat:open, message:history and message:sync stop early with hasMore, always hold a message, and page to the end", async () => {
    const open = await owner.emitWithAck("chat:open", { chatId, limit: Limits.MAX_PAGE_SIZE });
    if (!open.ok) throw new Error(JSON.stringify(open.error));
    expect(open.data.hasMore).toBe(true);
    expect(open.data.messages.length).toBeGreaterThanOrEqual(1);
    expect(open.data.messages.length).toBeLessThan(TOTAL);
    expect(bytes(open.data.messages)).toBeLessThanOrEqual(Limits.MAX_PAGE_BYTES);
    // The latest page: it ends with the last message.
    expect(open.data.messages.at(-1)?.seq).toBe(TOTAL);

    // Backwards with history until the start.
    const seen: ChatMessage[] = [...open.data.messages];
    let hasMore = open.data.hasMore;
    for (let i = 0; hasMore && i < TOTAL; i++) {
      const page = await owner.emitWithAck("message:history", {
        chatId,
        before: seen[0]?.seq as number,
        limit: Limits.MAX_PAGE_SIZE,
      });
      if (!page.ok) throw new Error(JSON.stringify(page.error));
      expect(page.data.messages.length).toBeGreaterThanOrEqual(1);
      expect(bytes(page.data.messages)).toBeLessThanOrEqual(Limits.MAX_PAGE_BYTES);
      seen.unshift(...page.data.messages);
      hasMore = page.data.hasMore;
    }
    expect(seen.map((m) => m.seq)).toEqual(Array.from({ length: TOTAL }, (_, i) => i + 1));
    expect(seen.every((m) => m.content === AWKWARD)).toBe(true);

    // Forwards with sync from the start.
    const synced: number[] = [];
    let afterSeq = 0;
    for (let i = 0, more = true; more && i < TOTAL; i++) {
      const page = await owner.emitWithAck("message:sync", { chatId, afterSeq });
      if (!page.ok) throw new Error(JSON.stringify(page.error));
      expect(page.data.messages.length).toBeGreaterThanOrEqual(1);
      expect(bytes(page.data.messages)).toBeLessThanOrEqual(Limits.MAX_PAGE_BYTES);
      synced.push(...page.data.messages.map((m) => m.seq));
      afterSeq = page.data.lastSeq;
      more = page.data.hasMore;
    }
    expect(synced).toEqual(Array.from({ length: TOTAL }, (_, i) => i + 1));

    // The service API's GET messages shares the service: the same bound.
    const owner_ = (
      await sql<{ clerk_id: string }[]>`
      select u.clerk_id from users u join chat_sessions c on c.user_id = u.id where c.id = ${chatId}`
    )[0];
    const api = await serviceClient(server.url, KEY).get<{
      messages: ChatMessage[];
      hasMore: boolean;
    }>(`/users/${owner_?.clerk_id}/chats/${chatId}/messages?limit=200`);
    expect(api.status).toBe(200);
    expect(api.body.hasMore).toBe(true);
    expect(api.body.messages.length).toBeGreaterThanOrEqual(1);
    expect(bytes(api.body.messages)).toBeLessThanOrEqual(Limits.MAX_PAGE_BYTES);
  });

  test("chat:list stops early with a nextCursor and pages through every chat", async () => {
    const ids: string[] = [];
    let cursor: string | undefined;
    let pages = 0;
    for (let i = 0; i < 20; i++) {
      const page = await owner.emitWithAck("chat:list", {
        limit: Limits.MAX_PAGE_SIZE,
        ...(cursor ? { cursor } : {}),
      });
      if (!page.ok) throw new Error(JSON.stringify(page.error));
      pages++;
      expect(page.data.chats.length).toBeGreaterThanOrEqual(1);
      expect(bytes(page.data.chats)).toBeLessThanOrEqual(Limits.MAX_PAGE_BYTES);
      ids.push(...page.data.chats.map((c) => c.id));
      if (!page.data.nextCursor) break;
      cursor = page.data.nextCursor;
    }
    expect(pages).toBeGreaterThan(1);
    expect(new Set(ids).size).toBe(8);
    expect(ids).toContain(chatId);
  });

  test("a single message larger than the budget still makes a page of one", async () => {
    const repo = new MessageRepository(server.database.sql);
    const [row] = await sql<{ user_id: string }[]>`
      select user_id from chat_sessions where id = ${chatId}`;
    const page = await repo.page(row?.user_id as string, chatId, 50, {}, { maxBytes: 1000 });
    expect(page.rows.map((r) => r.seq)).toEqual([TOTAL]);
    expect(page.hasMore).toBe(true);
  });
});

describe("page commands in progress per socket", () => {
  test(`${Limits.MAX_PAGES_IN_FLIGHT} run at once, ${Limits.MAX_PAGES_IN_FLIGHT * 4} more wait their turn, the rest are refused RATE_LIMITED with retryAfterMs`, async () => {
    // A pool larger than the cap, so that the cap (not the pool) is what holds them back.
    const node = await startTestServer({
      databaseUrl: server.databaseUrl,
      commandTimeoutMs: 30_000,
    });
    const database = new URL(server.databaseUrl).pathname.slice(1);
    const admin = postgres(adminUrl, { max: 1, onnotice: () => {} });
    const locker = openSql(server.databaseUrl);
    try {
      const socket = await node.connectAs(userId("in_flight"));
      const created = await socket.emitWithAck("chat:create", { title: "busy" });
      if (!created.ok) throw new Error("no chat");
      const chatId = created.data.chat.id;
      const RUNNING = Limits.MAX_PAGES_IN_FLIGHT;
      const WAITING = RUNNING * 4;
      const EXTRA = 5;
      let acks: Ack<unknown>[] = [];
      await locker.begin(async (tx) => {
        // Every read of chat_memory now waits for this transaction: nothing can finish.
        await tx`lock table chat_memory in access exclusive mode`;
        const pending = Array.from({ length: RUNNING + WAITING + EXTRA }, () =>
          socket.timeout(30_000).emitWithAck("message:history", { chatId }),
        );
        await eventually(async () => expect(await waitingReads(admin, database)).toBe(RUNNING));
        // Other commands are not held up behind them.
        const stats = await socket.timeout(10_000).emitWithAck("user:stats", {});
        expect(stats.ok).toBe(true);
        expect(await waitingReads(admin, database)).toBe(RUNNING);
        // Released by the transaction's end (below); collect the answers after it.
        void Promise.all(pending).then((a) => {
          acks = a;
        });
      });
      await eventually(() => expect(acks).toHaveLength(RUNNING + WAITING + EXTRA), 20_000);
      const refused = acks.filter((a): a is Extract<Ack<unknown>, { ok: false }> => !a.ok);
      expect(acks.filter((a) => a.ok)).toHaveLength(RUNNING + WAITING);
      expect(refused).toHaveLength(EXTRA);
      for (const r of refused) {
        expect(r.error.code).toBe("RATE_LIMITED");
        expect(r.error.retryAfterMs).toBeGreaterThan(0);
      }
      expect(socket.connected).toBe(true);
    } finally {
      await locker.end({ timeout: 5 });
      await admin.end({ timeout: 5 });
      await node.close();
    }
  }, 60_000);
});

describe("a read nobody waits for any more is not started", () => {
  /** How many page reads the node has sent to Postgres. */
  async function pagesRead(node: TestServer): Promise<number> {
    const { values } = await node.app.metrics.dbDuration.get();
    return (
      values.find(
        (v) =>
          v.metricName === "chat_db_query_duration_seconds_count" &&
          v.labels.operation === "message_page",
      )?.value ?? 0
    );
  }

  test("when its socket disconnected, or its command timed out, while it waited for its turn", async () => {
    const node = await startTestServer({ databaseUrl: server.databaseUrl, commandTimeoutMs: 2000 });
    const database = new URL(server.databaseUrl).pathname.slice(1);
    const admin = postgres(adminUrl, { max: 1, onnotice: () => {} });
    const locker = openSql(server.databaseUrl);
    const RUNNING = Limits.MAX_PAGES_IN_FLIGHT;
    try {
      for (const ending of ["disconnect", "timeout"] as const) {
        const socket = await node.connectAs(userId(`not_started_${ending}`));
        const created = await socket.emitWithAck("chat:create", { title: ending });
        if (!created.ok) throw new Error("no chat");
        const chatId = created.data.chat.id;
        const before = await pagesRead(node);
        const acks: unknown[] = [];
        await locker.begin(async (tx) => {
          await tx`lock table chat_memory in access exclusive mode`;
          for (let i = 0; i < RUNNING + 4; i++) {
            socket.emit("message:history", { chatId }, (ack) => acks.push(ack));
          }
          await eventually(async () => expect(await waitingReads(admin, database)).toBe(RUNNING));
          if (ending === "disconnect") socket.disconnect();
          else {
            await eventually(() => expect(acks).toHaveLength(RUNNING + 4), 5000);
            for (const a of acks)
              expect(a).toMatchObject({ ok: false, error: { code: "UNAVAILABLE" } });
          }
        });
        // The running ones finish once the lock is gone; the waiting ones were never sent.
        await eventually(async () => expect(await pagesRead(node)).toBe(before + RUNNING));
        expect(await waitingReads(admin, database)).toBe(0);
        if (ending === "disconnect") expect(acks).toEqual([]);
        socket.disconnect();
      }
    } finally {
      await locker.end({ timeout: 5 });
      await admin.end({ timeout: 5 });
      await node.close();
    }
  }, 60_000);
});

/**
 * Exactly-once storage and one total order: retried sends and creates, conflicting retries,
 * and many devices writing to one chat at once. Run on the in-memory adapter and on Redis.
 */
import { randomUUID } from "node:crypto";
import type postgres from "postgres";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import {
  type ChatMessage,
  type ChatSummary,
  ErrorCode,
  Limits,
  type UserStats,
} from "../../protocol/index.js";
import { adapterBackends } from "../helpers/backends.js";
import {
  type ClientSocket,
  eventually,
  recordEvents,
  startTestServer,
  type TestServer,
  testRedisUrl,
} from "../helpers/server.js";
import {
  chatState,
  command,
  nextEvent,
  ok,
  openSql,
  refused,
  userId,
  userState,
} from "./support.js";

describe.each(adapterBackends)("on the $name adapter", (adapter) => {
  let server: TestServer;
  let sql: postgres.Sql;

  beforeAll(async () => {
    server = await startTestServer(adapter.options());
    sql = openSql(server.databaseUrl);
  });
  afterAll(async () => {
    await sql?.end({ timeout: 5 });
    await server?.close();
  });

  async function rowsWithClientId(chatId: string, clientId: string) {
    return sql<{ id: string; seq: number; content: string }[]>`
    select id, seq::int as seq, message->>'content' as content from chat_memory
     where session_id = ${chatId} and client_id = ${clientId}`;
  }

  /** Every message of a chat through message:history, walking forward page by page. */
  async function walkHistory(s: ClientSocket, chatId: string): Promise<ChatMessage[]> {
    const all: ChatMessage[] = [];
    let after = 0;
    for (;;) {
      const page = await ok(s, "message:history", { chatId, after, limit: Limits.MAX_PAGE_SIZE });
      all.push(...page.messages);
      if (!page.hasMore) return all;
      after = (page.messages.at(-1) as ChatMessage).seq;
    }
  }

  /** Where a stream goes backwards: how often, and the first few [previous seq, seq] pairs. */
  function inversions(stream: ChatMessage[]): { count: number; first: [number, number][] } {
    const first: [number, number][] = [];
    let count = 0;
    for (let i = 1; i < stream.length; i++) {
      const prev = (stream[i - 1] as ChatMessage).seq;
      const cur = (stream[i] as ChatMessage).seq;
      if (cur < prev) {
        count++;
        if (first.length < 5) first.push([prev, cur]);
      }
    }
    return { count, first };
  }

  describe("idempotent sends", () => {
    test("the same clientId twice stores one row, acks duplicate with the same message, broadcasts once", async () => {
      const id = userId("retry");
      const phone = await server.connectAs(id);
      const laptop = await server.connectAs(id);
      const phoneEvents = recordEvents(phone);
      const laptopEvents = recordEvents(laptop);
      const { chat } = await ok(phone, "chat:create", { title: "retry" });
      await ok(phone, "chat:open", { chatId: chat.id });
      await ok(laptop, "chat:open", { chatId: chat.id });

      const payload = { chatId: chat.id, clientId: "01JRETRY0000000000000000AA", content: "once" };
      const first = await ok(phone, "message:send", payload);
      // The retry comes from the other device, as after a reconnect.
      const second = await ok(laptop, "message:send", payload);
      const third = await ok(phone, "message:send", payload);
      expect(first.duplicate).toBe(false);
      expect(second).toEqual({ message: first.message, duplicate: true });
      expect(third).toEqual({ message: first.message, duplicate: true });
      expect(first.message).toMatchObject({ seq: 1, clientId: payload.clientId, content: "once" });

      const rows = await rowsWithClientId(chat.id, payload.clientId);
      expect(rows).toEqual([{ id: first.message.id, seq: 1, content: "once" }]);

      // A later message is the barrier: both devices got it, so a second broadcast of the
      // retried one would already be there.
      const next = await ok(laptop, "message:send", {
        chatId: chat.id,
        clientId: "after-retry",
        content: "next",
      });
      expect(next.message.seq).toBe(2);
      for (const rec of [phoneEvents, laptopEvents]) {
        await eventually(() =>
          expect(rec.of("message:created")).toEqual([
            { message: first.message },
            { message: next.message },
          ]),
        );
        await eventually(() =>
          expect(rec.of<{ chat: ChatSummary }>("chat:updated").map((e) => e.chat.lastSeq)).toEqual([
            1, 2,
          ]),
        );
      }
      expect(await chatState(sql, chat.id)).toMatchObject({ last_seq: 2, messages: 2, max_seq: 2 });
      await eventually(async () =>
        expect((await ok(phone, "user:stats", {})).stats.messageCount).toBe(2),
      );
      expect(await userState(sql, id)).toMatchObject({ message_count: 2, messages: 2 });
    });

    test("the same clientId with different content is a CONFLICT and changes nothing", async () => {
      const id = userId("conflict");
      const s = await server.connectAs(id);
      const rec = recordEvents(s);
      const { chat } = await ok(s, "chat:create", {});
      await ok(s, "chat:open", { chatId: chat.id });
      const first = await ok(s, "message:send", { chatId: chat.id, clientId: "k", content: "A" });
      const before = await chatState(sql, chat.id);

      const error = await refused(s, "message:send", {
        chatId: chat.id,
        clientId: "k",
        content: "B",
      });
      expect(error.code).toBe(ErrorCode.CONFLICT);
      // Content is compared exactly: trailing whitespace is different content.
      expect(
        (await refused(s, "message:send", { chatId: chat.id, clientId: "k", content: "A " })).code,
      ).toBe(ErrorCode.CONFLICT);

      expect(await rowsWithClientId(chat.id, "k")).toEqual([
        { id: first.message.id, seq: 1, content: "A" },
      ]);
      expect(await chatState(sql, chat.id)).toEqual(before);
      // The same clientId in another chat is a new message there.
      const { chat: other } = await ok(s, "chat:create", {});
      const elsewhere = await ok(s, "message:send", {
        chatId: other.id,
        clientId: "k",
        content: "B",
      });
      expect(elsewhere.duplicate).toBe(false);
      expect(elsewhere.message.seq).toBe(1);
      expect(elsewhere.message.id).not.toBe(first.message.id);

      await ok(s, "message:send", { chatId: chat.id, clientId: "barrier", content: "barrier" });
      await eventually(() => expect(rec.of("message:created")).toHaveLength(2));
      expect(
        rec.of<{ message: ChatMessage }>("message:created").map((e) => e.message.content),
      ).toEqual(["A", "barrier"]);
    });

    test("concurrent sends of one clientId from several devices store it once", async () => {
      // A node stores one chat's sends in order (group commit), so the storage race needs two
      // nodes: devices on both, sharing the database and (for the broadcasts) Redis.
      const prefix = `race-${randomUUID().slice(0, 8)}`;
      const nodeA = await startTestServer({
        databaseUrl: server.databaseUrl,
        redisUrl: testRedisUrl,
        redisKeyPrefix: prefix,
      });
      const nodeB = await startTestServer({
        databaseUrl: server.databaseUrl,
        redisUrl: testRedisUrl,
        redisKeyPrefix: prefix,
      });
      try {
        const id = userId("race");
        const sockets = await Promise.all([nodeA, nodeB, nodeA, nodeB].map((n) => n.connectAs(id)));
        const [s1] = sockets as [ClientSocket];
        const recs = sockets.map(recordEvents);
        const { chat } = await ok(s1, "chat:create", {});
        for (const s of sockets) await ok(s, "chat:open", { chatId: chat.id });
        await eventually(async () => {
          expect(await nodeA.app.io.in(`session:${chat.id}`).fetchSockets()).toHaveLength(4);
        });
        const payload = { chatId: chat.id, clientId: "same-everywhere", content: "racing" };

        // Another writer holds the chat's row lock (a slow send in flight), so every retry has
        // checked for an existing row and is waiting for the lock when it is released: the
        // moment two devices retry the same send at once.
        const SENDS = 8;
        let pending: Promise<Awaited<ReturnType<typeof command<"message:send">>>[]> | undefined;
        await sql.begin(async (tx) => {
          await tx`select 1 from chat_sessions where id = ${chat.id} for update`;
          pending = Promise.all(
            Array.from({ length: SENDS }, (_, i) =>
              command(sockets[i % sockets.length] as ClientSocket, "message:send", payload),
            ),
          );
          await eventually(async () => {
            const [row] = await sql<{ n: number }[]>`
          select count(*)::int as n from pg_stat_activity
           where datname = current_database() and application_name = 'chat-backend'
             and wait_event_type = 'Lock'`;
            // One send per node reaches the database; the others wait in their node's queue.
            expect(row?.n).toBe(2);
          }, 10_000);
        });
        const results = await (pending as NonNullable<typeof pending>);

        // Every retry is answered with the stored message. Soft, so that the storage checks below
        // still run when some are refused.
        expect
          .soft(results.map((r) => (r.ok ? "ok" : r.error.code)))
          .toEqual(Array.from({ length: SENDS }, () => "ok"));
        const acks = results.flatMap((r) => (r.ok ? [r.data] : []));
        expect(acks.filter((a) => !a.duplicate)).toHaveLength(1);
        const original = acks.find((a) => !a.duplicate)?.message;
        expect(original).toMatchObject({ seq: 1, clientId: payload.clientId, content: "racing" });
        for (const a of acks) expect(a.message).toEqual(original);
        expect(await rowsWithClientId(chat.id, payload.clientId)).toHaveLength(1);

        const barrier = await ok(s1, "message:send", {
          chatId: chat.id,
          clientId: "barrier",
          content: "barrier",
        });
        expect(barrier.message.seq).toBe(2);
        for (const rec of recs) {
          await eventually(() =>
            expect(rec.of("message:created")).toEqual([
              { message: original },
              { message: barrier.message },
            ]),
          );
        }
        expect(await chatState(sql, chat.id)).toMatchObject({ last_seq: 2, messages: 2 });
        expect(await userState(sql, id)).toMatchObject({ message_count: 2 });
      } finally {
        await nodeB.close();
        await nodeA.close();
      }
    });
  });

  describe("concurrent writers", () => {
    test("3 devices x 200 concurrent sends: seq 1..600, and every live stream equals the history", async () => {
      const DEVICES = 3;
      const PER_DEVICE = 200;
      const TOTAL = DEVICES * PER_DEVICE;
      const id = userId("storm");
      const sockets: ClientSocket[] = [];
      for (let i = 0; i < DEVICES; i++) sockets.push(await server.connectAs(id));
      const recs = sockets.map(recordEvents);
      const { chat } = await ok(sockets[0] as ClientSocket, "chat:create", { title: "storm" });
      for (const s of sockets) await ok(s, "chat:open", { chatId: chat.id });

      // Fire everything at once; no send waits for another.
      const acks = await Promise.all(
        sockets.flatMap((s, d) =>
          Array.from({ length: PER_DEVICE }, (_, i) =>
            command(s, "message:send", {
              chatId: chat.id,
              clientId: `d${d}-${i}`,
              content: `device ${d} message ${i}`,
            }),
          ),
        ),
      );
      const messages: ChatMessage[] = [];
      for (const ack of acks) {
        if (!ack.ok) throw new Error(`a send failed: ${JSON.stringify(ack.error)}`);
        expect(ack.data.duplicate).toBe(false);
        messages.push(ack.data.message);
      }
      // The acks carry seqs 1..600: no gaps, no duplicates.
      expect(messages.map((m) => m.seq).sort((a, b) => a - b)).toEqual(
        Array.from({ length: TOTAL }, (_, i) => i + 1),
      );
      // Each ack is the message that was sent.
      for (const [k, m] of messages.entries()) {
        const d = Math.floor(k / PER_DEVICE);
        const i = k % PER_DEVICE;
        expect(m).toMatchObject({ clientId: `d${d}-${i}`, content: `device ${d} message ${i}` });
      }

      const history = await walkHistory(sockets[1] as ClientSocket, chat.id);
      expect(history.map((m) => m.seq)).toEqual(Array.from({ length: TOTAL }, (_, i) => i + 1));
      const bySeq = new Map(messages.map((m) => [m.seq, m]));
      for (const m of history) expect(m).toEqual(bySeq.get(m.seq));
      // Every device saw every message live, once, in the one order of the history.
      for (const rec of recs) {
        await eventually(() => expect(rec.of("message:created")).toHaveLength(TOTAL), 15_000);
      }
      for (const [d, rec] of recs.entries()) {
        const live = rec.of<{ message: ChatMessage }>("message:created").map((e) => e.message);
        // Complete and without repeats ...
        expect([...live].sort((a, b) => a.seq - b.seq)).toEqual(history);
        // ... and in seq order (together: exactly the history). Soft, so that the checks below
        // still run when this one fails.
        expect
          .soft({ device: d, outOfOrder: inversions(live) })
          .toEqual({ device: d, outOfOrder: { count: 0, first: [] } });
      }

      // Sends stored together (group commit) share one sidebar update, so every device got at
      // most one per message, in increasing lastSeq order, and the newest matches the stored chat.
      const [stored] = (await ok(sockets[2] as ClientSocket, "chat:list", {})).chats;
      const last = history.at(-1) as ChatMessage;
      expect(stored).toMatchObject({
        id: chat.id,
        lastSeq: TOTAL,
        lastMessage: { role: "user", content: last.content },
      });
      for (const rec of recs) {
        await eventually(() =>
          expect(rec.of<{ chat: ChatSummary }>("chat:updated").at(-1)?.chat.lastSeq).toBe(TOTAL),
        );
        const updates = rec.of<{ chat: ChatSummary }>("chat:updated").map((e) => e.chat);
        expect(updates.length).toBeGreaterThan(0);
        expect(updates.length).toBeLessThanOrEqual(TOTAL);
        const seqs = updates.map((c) => c.lastSeq);
        expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
        expect(new Set(seqs).size).toBe(seqs.length);
        // chat:updated omits the generating state (absent means unchanged).
        expect(updates.at(-1)).toEqual({ ...stored, generating: undefined });
      }

      // The stored state and counters agree.
      expect(await chatState(sql, chat.id)).toMatchObject({
        last_seq: TOTAL,
        messages: TOTAL,
        max_seq: TOTAL,
      });
      expect(await userState(sql, id)).toMatchObject({
        message_count: TOTAL,
        messages: TOTAL,
        total_conversations: 1,
      });
      const expectedStats: UserStats = {
        totalConversations: 1,
        totalSearches: 0,
        messageCount: TOTAL,
        tokenUsage: 0,
        subscriptionTier: "free",
        subscriptionStatus: "active",
      };
      expect((await ok(sockets[0] as ClientSocket, "user:stats", {})).stats).toEqual(expectedStats);
      for (const rec of recs) {
        await eventually(() =>
          expect(rec.of("stats:updated").at(-1)).toEqual({ stats: expectedStats }),
        );
      }
    });
  });

  describe("group commit across chats", () => {
    test("sends to 40 chats of 8 users at once: fewer statements than messages, every chat exact", async () => {
      const USERS = 8;
      const CHATS = 5;
      const PER_CHAT = 6;
      const users = await Promise.all(
        Array.from({ length: USERS }, async (_, u) => {
          const s = await server.connectAs(userId(`gc${u}`));
          const chats: ChatSummary[] = [];
          for (let c = 0; c < CHATS; c++) chats.push((await ok(s, "chat:create", {})).chat);
          return { s, chats };
        }),
      );
      const inserts = async () =>
        (await server.app.metrics.dbDuration.get()).values.find(
          (v) => v.metricName?.endsWith("_count") && v.labels.operation === "message_insert",
        )?.value ?? 0;
      const statementsBefore = await inserts();

      // Everything at once, interleaved across users and chats.
      const sends = [];
      for (let k = 0; k < PER_CHAT; k++)
        for (const [u, { s, chats }] of users.entries())
          for (const chat of chats)
            sends.push(
              command(s, "message:send", {
                chatId: chat.id,
                clientId: `gc-${u}-${chat.id}-${k}`,
                content: `user ${u} chat ${chat.id} #${k}`,
              }).then((ack) => ({ ack, chatId: chat.id, k })),
            );
      const results = await Promise.all(sends);
      const total = USERS * CHATS * PER_CHAT;
      expect(results).toHaveLength(total);
      const statements = (await inserts()) - statementsBefore;
      expect(statements).toBeGreaterThan(0);
      expect(statements).toBeLessThan(total);

      // Per chat: seqs 1..PER_CHAT in the order the sends were made, each ack the stored row.
      for (const { ack, chatId, k } of results) {
        if (!ack.ok) throw new Error(`a send failed: ${JSON.stringify(ack.error)}`);
        expect(ack.data.duplicate).toBe(false);
        expect(ack.data.message).toMatchObject({ chatId, seq: k + 1 });
      }
      for (const { s, chats } of users) {
        for (const chat of chats) {
          const history = await walkHistory(s, chat.id);
          expect(history.map((m) => m.seq)).toEqual(
            Array.from({ length: PER_CHAT }, (_, i) => i + 1),
          );
          expect(await chatState(sql, chat.id)).toMatchObject({ last_seq: PER_CHAT });
        }
      }
    });
  });

  describe("idempotent chat creation", () => {
    test("chat:create with a client-chosen id twice returns the same chat and stores one row", async () => {
      const id = userId("createid");
      const s = await server.connectAs(id);
      const other = await server.connectAs(id);
      const rec = recordEvents(other);
      const chatId = randomUUID();

      const created = nextEvent(other, "chat:created");
      const first = await ok(s, "chat:create", { id: chatId, title: "idempotent" });
      const again = await ok(s, "chat:create", { id: chatId, title: "idempotent" });
      // A retry whose title differs still returns the stored chat unchanged.
      const retitled = await ok(other, "chat:create", { id: chatId, title: "something else" });
      expect(first.chat).toMatchObject({ id: chatId, title: "idempotent", lastSeq: 0 });
      expect(again).toEqual(first);
      expect(retitled).toEqual(first);
      expect(await created).toEqual({ chat: first.chat });

      const [{ n } = { n: -1 }] = await sql<{ n: number }[]>`
      select count(*)::int as n from chat_sessions where id = ${chatId}`;
      expect(n).toBe(1);
      expect(await userState(sql, id)).toMatchObject({ chats: 1, total_conversations: 1 });

      // Concurrent retries of a new id: all succeed with one chat.
      const racedId = randomUUID();
      const raced = await Promise.all(
        [s, other, s, other, s].map((sock) => ok(sock, "chat:create", { id: racedId })),
      );
      for (const r of raced) expect(r.chat).toEqual(raced[0]?.chat);
      expect(await userState(sql, id)).toMatchObject({ chats: 2, total_conversations: 2 });

      await eventually(() =>
        expect(rec.of<{ stats: UserStats }>("stats:updated").at(-1)?.stats.totalConversations).toBe(
          2,
        ),
      );
      expect(rec.of("chat:created")).toEqual([{ chat: first.chat }, { chat: raced[0]?.chat }]);
      const { chats } = await ok(other, "chat:list", {});
      expect(chats.map((c) => c.id).sort()).toEqual([chatId, racedId].sort());
    });
  });
});

/**
 * One user on several devices (sockets): live events reach every device, and the read commands
 * (sidebar, open, history, sync, stats) return exactly what was stored. Run on the in-memory
 * adapter and on Redis.
 */
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
} from "../helpers/server.js";
import { chatState, ok, openSql, refused, userId, userState } from "./support.js";

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

  type Recorder = ReturnType<typeof recordEvents>;
  interface Device {
    s: ClientSocket;
    rec: Recorder;
  }

  /** Connects `n` devices of one user, each recording every event from the start. */
  async function devices(id: string, n: number): Promise<Device[]> {
    const list: Device[] = [];
    for (let i = 0; i < n; i++) {
      const s = await server.connectAs(id);
      list.push({ s, rec: recordEvents(s) });
    }
    return list;
  }

  function three(list: Device[]): [Device, Device, Device] {
    const [a, b, c] = list;
    if (!a || !b || !c) throw new Error("need three devices");
    return [a, b, c];
  }

  const BASE_STATS: UserStats = {
    totalConversations: 0,
    totalSearches: 0,
    messageCount: 0,
    tokenUsage: 0,
    subscriptionTier: "free",
    subscriptionStatus: "active",
  };

  /** Sends `n` messages one after another; message i (1-based) has content `${prefix}${i}`. */
  async function sendSequential(s: ClientSocket, chatId: string, n: number, prefix = "m") {
    const sent: ChatMessage[] = [];
    for (let i = 1; i <= n; i++) {
      const { message, duplicate } = await ok(s, "message:send", {
        chatId,
        clientId: `${prefix}-${i}`,
        content: `${prefix}${i}`,
      });
      expect(duplicate).toBe(false);
      sent.push(message);
    }
    return sent;
  }

  /**
   * A chat's updatedAt carries microseconds (the exact sort key); a message's createdAt carries
   * milliseconds. They name the same instant when the first extends the second.
   */
  const sameInstant = (msIso: string) =>
    expect.stringMatching(new RegExp(`^${msIso.slice(0, 23).replace(/\./g, "\\.")}\\d{3}Z$`));

  const seqs = (messages: ChatMessage[]) => messages.map((m) => m.seq);
  const range = (from: number, to: number) =>
    Array.from({ length: to - from + 1 }, (_, i) => from + i);

  describe("live events across a user's devices", () => {
    test("a chat created on one device arrives as chat:created on all three, with stats", async () => {
      const [d1, d2, d3] = three(await devices(userId("create"), 3));
      const { chat } = await ok(d2.s, "chat:create", { title: "  Trip planning  " });
      expect(chat).toEqual({
        id: expect.stringMatching(/^[0-9a-f-]{36}$/),
        title: "Trip planning",
        lastMessage: null,
        lastSeq: 0,
        version: 1,
        createdAt: expect.any(String),
        updatedAt: sameInstant(chat.createdAt),
        // No reply is being generated in a new chat.
        generating: null,
      });
      for (const d of [d1, d2, d3]) {
        await eventually(() => expect(d.rec.of("chat:created")).toEqual([{ chat }]));
        await eventually(() =>
          expect(d.rec.of<{ stats: UserStats }>("stats:updated").at(-1)).toEqual({
            stats: { ...BASE_STATS, totalConversations: 1 },
          }),
        );
      }
      // No message or sidebar update came with a create.
      for (const d of [d1, d2, d3]) {
        expect(d.rec.of("message:created")).toEqual([]);
        expect(d.rec.of("chat:updated")).toEqual([]);
      }
    });

    test("a message reaches message:created on devices that opened the chat and chat:updated on all", async () => {
      const id = userId("send");
      const [d1, d2, d3] = three(await devices(id, 3));
      const { chat } = await ok(d1.s, "chat:create", { title: "Live" });
      await ok(d1.s, "chat:open", { chatId: chat.id });
      await ok(d2.s, "chat:open", { chatId: chat.id });
      // d3 only watches the sidebar.

      const { message, duplicate } = await ok(d1.s, "message:send", {
        chatId: chat.id,
        clientId: "c-1",
        content: "hello devices",
      });
      expect(duplicate).toBe(false);
      expect(message).toEqual({
        id: expect.stringMatching(/^[0-9a-f-]{36}$/),
        chatId: chat.id,
        seq: 1,
        clientId: "c-1",
        role: "user",
        content: "hello devices",
        createdAt: expect.any(String),
      });

      const expectedSummary: ChatSummary = {
        id: chat.id,
        title: "Live",
        lastMessage: { role: "user", content: "hello devices" },
        lastSeq: 1,
        // Created at 1; the message's two trigger updates (seq, then preview) raise it twice.
        version: 3,
        createdAt: chat.createdAt,
        updatedAt: sameInstant(message.createdAt),
      };
      for (const d of [d1, d2, d3]) {
        await eventually(() =>
          expect(d.rec.of("chat:updated")).toEqual([{ chat: expectedSummary }]),
        );
      }
      for (const d of [d1, d2]) {
        expect(d.rec.of("message:created")).toEqual([{ message }]);
      }
      // chat:updated is emitted after message:created, on the same connection: had d3 been sent
      // the message, it would have arrived by now.
      expect(d3.rec.of("message:created")).toEqual([]);

      // The sidebar entry the event carried is the one the server now lists.
      const { chats } = await ok(d3.s, "chat:list", {});
      // chat:list also says whether a reply is being generated (chat:updated may omit it).
      expect(chats).toEqual([{ ...expectedSummary, generating: null }]);
      const row = await chatState(sql, chat.id);
      expect(row).toMatchObject({
        last_seq: 1,
        messages: 1,
        last_message: { role: "user", content: "hello devices" },
      });

      // After chat:close, d2 gets only the sidebar update.
      expect(await ok(d2.s, "chat:close", { chatId: chat.id })).toEqual({ chatId: chat.id });
      const second = await ok(d3.s, "message:send", {
        chatId: chat.id,
        clientId: "c-2",
        content: "second",
      });
      expect(second.message.seq).toBe(2);
      for (const d of [d1, d2, d3]) {
        await eventually(() =>
          expect(d.rec.of<{ chat: ChatSummary }>("chat:updated").at(-1)?.chat).toMatchObject({
            lastSeq: 2,
            lastMessage: { role: "user", content: "second" },
            updatedAt: sameInstant(second.message.createdAt),
          }),
        );
      }
      expect(d1.rec.of("message:created")).toEqual([{ message }, { message: second.message }]);
      expect(d2.rec.of("message:created")).toEqual([{ message }]);
      expect(d3.rec.of("message:created")).toEqual([]);

      await eventually(async () => {
        const expected = { stats: { ...BASE_STATS, totalConversations: 1, messageCount: 2 } };
        for (const d of [d1, d2, d3]) expect(d.rec.of("stats:updated").at(-1)).toEqual(expected);
      });
    });

    test("a rename and a delete propagate as chat:updated and chat:deleted", async () => {
      const id = userId("rename");
      const [d1, d2, d3] = three(await devices(id, 3));
      const { chat } = await ok(d1.s, "chat:create", { title: "Old name" });
      await ok(d1.s, "message:send", { chatId: chat.id, clientId: "x", content: "kept preview" });
      await ok(d3.s, "chat:open", { chatId: chat.id });
      const before = await chatState(sql, chat.id);

      const renamed = await ok(d2.s, "chat:rename", { chatId: chat.id, title: "  New name " });
      expect(renamed.chat).toMatchObject({
        id: chat.id,
        title: "New name",
        lastMessage: { role: "user", content: "kept preview" },
        lastSeq: 1,
        createdAt: chat.createdAt,
      });
      expect(Date.parse(renamed.chat.updatedAt)).toBeGreaterThanOrEqual(Date.parse(chat.updatedAt));
      for (const d of [d1, d2, d3]) {
        await eventually(() =>
          expect(d.rec.of("chat:updated").at(-1)).toEqual({ chat: renamed.chat }),
        );
      }
      const after = await chatState(sql, chat.id);
      expect(after?.title).toBe("New name");
      expect(BigInt(after?.updated_us ?? 0)).toBeGreaterThan(BigInt(before?.updated_us ?? 0));

      const statsBefore = (await ok(d1.s, "user:stats", {})).stats;
      expect(statsBefore).toMatchObject({ totalConversations: 1, messageCount: 1 });

      expect(await ok(d3.s, "chat:delete", { chatId: chat.id })).toEqual({ chatId: chat.id });
      for (const d of [d1, d2, d3]) {
        await eventually(() => expect(d.rec.of("chat:deleted")).toEqual([{ chatId: chat.id }]));
      }
      expect(await chatState(sql, chat.id)).toBeUndefined();
      const [{ n } = { n: -1 }] = await sql<{ n: number }[]>`
      select count(*)::int as n from chat_memory where session_id = ${chat.id}`;
      expect(n).toBe(0);

      // Gone for every command; the lifetime counters do not go down.
      expect((await ok(d1.s, "chat:list", {})).chats).toEqual([]);
      expect((await refused(d3.s, "chat:open", { chatId: chat.id })).code).toBe(
        ErrorCode.NOT_FOUND,
      );
      expect(
        (await refused(d3.s, "message:send", { chatId: chat.id, clientId: "y", content: "late" }))
          .code,
      ).toBe(ErrorCode.NOT_FOUND);
      expect((await refused(d2.s, "chat:rename", { chatId: chat.id, title: "t" })).code).toBe(
        ErrorCode.NOT_FOUND,
      );
      expect((await refused(d2.s, "chat:delete", { chatId: chat.id })).code).toBe(
        ErrorCode.NOT_FOUND,
      );
      expect((await ok(d1.s, "user:stats", {})).stats).toEqual(statsBefore);
      expect(d3.rec.of("message:created")).toHaveLength(0);
    });

    test("stats:updated reaches every device with the counters user:stats reports", async () => {
      const id = userId("stats");
      const [d1, d2, d3] = three(await devices(id, 3));
      const a = await ok(d1.s, "chat:create", { title: "a" });
      const b = await ok(d2.s, "chat:create", { title: "b" });
      await Promise.all([
        ok(d1.s, "message:send", { chatId: a.chat.id, clientId: "1", content: "one" }),
        ok(d2.s, "message:send", { chatId: a.chat.id, clientId: "2", content: "two" }),
        ok(d3.s, "message:send", { chatId: b.chat.id, clientId: "3", content: "three" }),
      ]);
      await ok(d3.s, "chat:delete", { chatId: b.chat.id });

      const expected: UserStats = { ...BASE_STATS, totalConversations: 2, messageCount: 3 };
      expect((await ok(d1.s, "user:stats", {})).stats).toEqual(expected);
      for (const d of [d1, d2, d3]) {
        await eventually(() =>
          expect(d.rec.of("stats:updated").at(-1)).toEqual({ stats: expected }),
        );
        // Every broadcast carried a consistent snapshot; counters never went backwards.
        const counts = d.rec.of<{ stats: UserStats }>("stats:updated").map((e) => e.stats);
        for (let i = 1; i < counts.length; i++) {
          const prev = counts[i - 1] as UserStats;
          const cur = counts[i] as UserStats;
          expect(cur.messageCount).toBeGreaterThanOrEqual(prev.messageCount);
          expect(cur.totalConversations).toBeGreaterThanOrEqual(prev.totalConversations);
        }
      }
      const row = await userState(sql, id);
      expect(row).toMatchObject({
        message_count: 3,
        total_conversations: 2,
        chats: 1,
        messages: 2,
      });
    });
  });

  describe("reading what was stored", () => {
    test("chat:list orders by latest activity and pages with nextCursor without gaps or repeats", async () => {
      const id = userId("list");
      const [d1, d2] = await devices(id, 2);
      if (!d1 || !d2) throw new Error("devices");
      const created: ChatSummary[] = [];
      for (let i = 0; i < 13; i++) {
        created.push((await ok(d1.s, "chat:create", { title: `chat ${i}` })).chat);
      }
      // Activity moves chats to the top: a message in chat 3, then a rename of chat 7.
      const c3 = created[3] as ChatSummary;
      const c7 = created[7] as ChatSummary;
      await ok(d2.s, "message:send", { chatId: c3.id, clientId: "bump", content: "bump" });
      await ok(d2.s, "chat:rename", { chatId: c7.id, title: "chat 7 renamed" });

      const expectedOrder = [
        c7.id,
        c3.id,
        ...created
          .map((c) => c.id)
          .reverse()
          .filter((cid) => cid !== c3.id && cid !== c7.id),
      ];

      const all = await ok(d1.s, "chat:list", {});
      expect(all.nextCursor).toBeNull();
      expect(all.chats.map((c) => c.id)).toEqual(expectedOrder);
      expect(all.chats[0]?.title).toBe("chat 7 renamed");
      expect(all.chats[1]?.lastMessage).toEqual({ role: "user", content: "bump" });
      expect(all.chats[1]?.lastSeq).toBe(1);
      // Sorted by updatedAt descending (then id descending).
      for (let i = 1; i < all.chats.length; i++) {
        const prev = all.chats[i - 1] as ChatSummary;
        const cur = all.chats[i] as ChatSummary;
        expect(Date.parse(prev.updatedAt)).toBeGreaterThanOrEqual(Date.parse(cur.updatedAt));
      }

      for (const limit of [1, 2, 5, 12, 13]) {
        const walked: string[] = [];
        const pageSizes: number[] = [];
        let cursor: string | undefined;
        for (let guard = 0; guard < 50; guard++) {
          const page = await ok(d2.s, "chat:list", cursor ? { limit, cursor } : { limit });
          pageSizes.push(page.chats.length);
          walked.push(...page.chats.map((c) => c.id));
          if (page.nextCursor === null) break;
          expect(typeof page.nextCursor).toBe("string");
          cursor = page.nextCursor;
        }
        expect(walked).toEqual(expectedOrder);
        expect(new Set(walked).size).toBe(13);
        const expectedSizes = range(1, Math.ceil(13 / limit)).map((p) =>
          Math.min(limit, 13 - (p - 1) * limit),
        );
        expect(pageSizes).toEqual(expectedSizes);
      }

      // A page boundary does not move when the chat after it gets newer activity: the cursor is a
      // position, so the bumped chat is not listed again on the next page.
      const first = await ok(d1.s, "chat:list", { limit: 4 });
      const bumped = expectedOrder[9] as string;
      await ok(d2.s, "message:send", { chatId: bumped, clientId: "bump2", content: "bump2" });
      const rest: string[] = [];
      let cursor = first.nextCursor;
      while (cursor) {
        const page = await ok(d1.s, "chat:list", { limit: 4, cursor });
        rest.push(...page.chats.map((c) => c.id));
        cursor = page.nextCursor;
      }
      expect(rest).toEqual(expectedOrder.slice(4).filter((cid) => cid !== bumped));
    });

    test("chat:open returns the latest page; message:history pages before and after", async () => {
      const id = userId("history");
      const [d1, d2] = await devices(id, 2);
      if (!d1 || !d2) throw new Error("devices");
      const { chat } = await ok(d1.s, "chat:create", { title: "long" });
      const empty = await ok(d2.s, "chat:open", { chatId: chat.id });
      expect(empty).toEqual({ chat, messages: [], hasMore: false, streams: [] });

      const sent = await sendSequential(d1.s, chat.id, 60);
      expect(seqs(sent)).toEqual(range(1, 60));
      expect(sent.map((m) => m.content)).toEqual(range(1, 60).map((i) => `m${i}`));

      const opened = await ok(d2.s, "chat:open", { chatId: chat.id });
      expect(opened.hasMore).toBe(true);
      expect(opened.messages).toEqual(sent.slice(60 - Limits.DEFAULT_PAGE_SIZE));
      expect(opened.chat).toMatchObject({
        id: chat.id,
        lastSeq: 60,
        lastMessage: { role: "user", content: "m60" },
        updatedAt: sameInstant(sent[59]?.createdAt ?? ""),
      });
      const small = await ok(d2.s, "chat:open", { chatId: chat.id, limit: 7 });
      expect(seqs(small.messages)).toEqual(range(54, 60));
      expect(small.hasMore).toBe(true);
      const whole = await ok(d2.s, "chat:open", { chatId: chat.id, limit: Limits.MAX_PAGE_SIZE });
      expect(whole.messages).toEqual(sent);
      expect(whole.hasMore).toBe(false);

      // Backwards from the open page down to the first message.
      const back: ChatMessage[] = [...small.messages];
      let hasMore = small.hasMore;
      let pages = 0;
      while (hasMore) {
        const oldest = back[0] as ChatMessage;
        const page = await ok(d2.s, "message:history", {
          chatId: chat.id,
          before: oldest.seq,
          limit: 11,
        });
        expect(page.messages.length).toBeGreaterThan(0);
        back.unshift(...page.messages);
        hasMore = page.hasMore;
        pages++;
      }
      expect(back).toEqual(sent);
      expect(pages).toBe(Math.ceil(53 / 11));

      // Forwards from the start.
      const forward: ChatMessage[] = [];
      let after = 0;
      for (;;) {
        const page = await ok(d1.s, "message:history", { chatId: chat.id, after, limit: 25 });
        forward.push(...page.messages);
        if (!page.hasMore) break;
        after = (page.messages.at(-1) as ChatMessage).seq;
      }
      expect(forward).toEqual(sent);

      const cases: [Record<string, number>, number[], boolean][] = [
        [{ before: 31, limit: 10 }, range(21, 30), true],
        [{ before: 11, limit: 10 }, range(1, 10), false],
        [{ before: 5, limit: 10 }, range(1, 4), false],
        [{ before: 1 }, [], false],
        [{ after: 50, limit: 5 }, range(51, 55), true],
        [{ after: 55, limit: 5 }, range(56, 60), false],
        [{ after: 60 }, [], false],
        [{ after: 1000 }, [], false],
        [{}, range(11, 60), true],
        [{ limit: 3 }, range(58, 60), true],
      ];
      for (const [position, expected, more] of cases) {
        const page = await ok(d1.s, "message:history", { chatId: chat.id, ...position });
        expect({ position, seqs: seqs(page.messages), hasMore: page.hasMore }).toEqual({
          position,
          seqs: expected,
          hasMore: more,
        });
        for (const m of page.messages) expect(m).toEqual(sent[m.seq - 1]);
      }
    });

    test("message:sync afterSeq returns exactly the messages a device missed", async () => {
      const id = userId("sync");
      const [d1, d2] = await devices(id, 2);
      if (!d1 || !d2) throw new Error("devices");
      const { chat } = await ok(d1.s, "chat:create", {});
      expect(chat.title).toBe("New Chat");
      await ok(d1.s, "chat:open", { chatId: chat.id });
      await ok(d2.s, "chat:open", { chatId: chat.id });
      const early = await sendSequential(d1.s, chat.id, 4, "early");
      await eventually(() => expect(d2.rec.of("message:created")).toHaveLength(4));
      const lastSeen = 4;

      // d2 goes offline; messages keep coming from d1.
      d2.s.disconnect();
      const missed = await sendSequential(d1.s, chat.id, 9, "missed");
      expect(seqs(missed)).toEqual(range(5, 13));

      // Back online as a new socket: sync from the last seq it saw.
      const back = await server.connectAs(id);
      const synced = await ok(back, "message:sync", { chatId: chat.id, afterSeq: lastSeen });
      expect(synced).toEqual({ messages: missed, hasMore: false, lastSeq: 13 });

      // The same in small pages, following lastSeq.
      const paged: ChatMessage[] = [];
      let afterSeq = lastSeen;
      let rounds = 0;
      for (;;) {
        const page = await ok(back, "message:sync", { chatId: chat.id, afterSeq, limit: 4 });
        paged.push(...page.messages);
        expect(page.lastSeq).toBe((page.messages.at(-1) as ChatMessage).seq);
        afterSeq = page.lastSeq;
        rounds++;
        if (!page.hasMore) break;
      }
      expect(paged).toEqual(missed);
      expect(rounds).toBe(3);

      // Fully caught up: nothing, and lastSeq stays where it was.
      expect(await ok(back, "message:sync", { chatId: chat.id, afterSeq: 13 })).toEqual({
        messages: [],
        hasMore: false,
        lastSeq: 13,
      });
      // From zero: everything, oldest first.
      const fromZero = await ok(back, "message:sync", { chatId: chat.id, afterSeq: 0 });
      expect(fromZero.messages).toEqual([...early, ...missed]);
      expect(fromZero.lastSeq).toBe(13);
    });

    test("user:stats reports lifetime counters that deleting chats does not lower", async () => {
      const id = userId("lifetime");
      const [d1] = await devices(id, 1);
      if (!d1) throw new Error("device");
      expect(await ok(d1.s, "user:stats", {})).toEqual({ stats: BASE_STATS });

      const chats: string[] = [];
      for (let i = 0; i < 4; i++) chats.push((await ok(d1.s, "chat:create", {})).chat.id);
      for (const [i, chatId] of chats.entries()) {
        await sendSequential(d1.s, chatId, i + 1, `c${i}-`);
      }
      expect((await ok(d1.s, "user:stats", {})).stats).toEqual({
        ...BASE_STATS,
        totalConversations: 4,
        messageCount: 10,
      });
      await ok(d1.s, "chat:delete", { chatId: chats[3] as string });
      await ok(d1.s, "chat:delete", { chatId: chats[0] as string });
      expect((await ok(d1.s, "user:stats", {})).stats).toEqual({
        ...BASE_STATS,
        totalConversations: 4,
        messageCount: 10,
      });
      expect(await userState(sql, id)).toMatchObject({
        total_conversations: 4,
        message_count: 10,
        chats: 2,
        messages: 5,
      });
    });
  });
});

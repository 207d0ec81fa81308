/**
 * Two users on one server: neither sees the other's events, and no command reaches the other
 * user's chats (NOT_FOUND, indistinguishable from a chat that does not exist, nothing changed).
 * Run on the in-memory adapter and on Redis (sharded adapter), where a user's events travel on
 * Redis channels of their rooms.
 */
import { randomUUID } from "node:crypto";
import type postgres from "postgres";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { type ChatSummary, ErrorCode, type ProtocolError } from "../../protocol/index.js";
import { adapterBackends } from "../helpers/backends.js";
import {
  type ClientSocket,
  eventually,
  recordEvents,
  startTestServer,
  type TestServer,
} from "../helpers/server.js";
import { nextEvent, ok, openSql, refused, userId, userState } from "./support.js";

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

  /** Everything stored about one chat, for before/after comparisons. */
  async function snapshot(chatId: string) {
    const chat = await sql`
    select id, user_id, title, last_seq, last_message, created_at, updated_at
      from chat_sessions where id = ${chatId}`;
    const messages = await sql`
    select id, seq, client_id, message, created_at from chat_memory
     where session_id = ${chatId} order by seq`;
    return { chat: [...chat], messages: [...messages] };
  }

  async function usersRow(clerkId: string) {
    const [row] = await sql`
    select id, message_count, total_conversations, total_searches, last_session_id,
           updated_at from users where clerk_id = ${clerkId}`;
    return row;
  }

  type Recorded = { name: string; payload: unknown }[];

  /**
   * Events other than stats:updated. A debounced stats broadcast may repeat an unchanged snapshot
   * a little later, so stats events are checked by value (`statsStayed`) instead.
   */
  const nonStats = (events: Recorded) => events.filter((e) => e.name !== "stats:updated");

  function statsStayed(events: Recorded, expected: Record<string, number>) {
    for (const e of events.filter((x) => x.name === "stats:updated")) {
      expect((e.payload as { stats: unknown }).stats).toMatchObject(expected);
    }
  }

  interface Owner {
    id: string;
    s: ClientSocket;
    rec: ReturnType<typeof recordEvents>;
    chat: ChatSummary;
  }

  /** User A with one chat holding three messages, the chat open on A's socket. */
  async function owner(): Promise<Owner> {
    const id = userId("alice");
    const s = await server.connectAs(id);
    const rec = recordEvents(s);
    const { chat } = await ok(s, "chat:create", { title: "Alice's secrets" });
    await ok(s, "chat:open", { chatId: chat.id });
    for (const i of [1, 2, 3]) {
      await ok(s, "message:send", { chatId: chat.id, clientId: `a-${i}`, content: `secret ${i}` });
    }
    await eventually(() =>
      expect(
        rec.of<{ stats: { messageCount: number } }>("stats:updated").at(-1)?.stats,
      ).toMatchObject({ messageCount: 3 }),
    );
    const final = (await ok(s, "chat:list", {})).chats[0];
    if (!final) throw new Error("no chat");
    return { id, s, rec, chat: final };
  }

  describe("another user's chat", () => {
    test("cannot be listed, opened, renamed, deleted, written, read or synced", async () => {
      const alice = await owner();
      const bobId = userId("bob");
      const bob = await server.connectAs(bobId);
      const bobEvents = recordEvents(bob);
      const before = await snapshot(alice.chat.id);
      const aliceBefore = await usersRow(alice.id);
      const eventsBefore = alice.rec.events.length;

      expect(await ok(bob, "chat:list", {})).toEqual({ chats: [], nextCursor: null });
      expect(await ok(bob, "chat:list", { limit: 200 })).toEqual({ chats: [], nextCursor: null });

      const chatId = alice.chat.id;
      const attempts: [string, Record<string, unknown>][] = [
        ["chat:open", { chatId }],
        ["chat:open", { chatId, limit: 200 }],
        ["chat:rename", { chatId, title: "pwned" }],
        ["chat:delete", { chatId }],
        ["message:send", { chatId, clientId: "b-1", content: "injected" }],
        ["message:send", { chatId, clientId: "a-1", content: "secret 1" }],
        ["message:history", { chatId }],
        ["message:history", { chatId, after: 0 }],
        ["message:history", { chatId, before: 4, limit: 200 }],
        ["message:sync", { chatId, afterSeq: 0 }],
      ];
      const unknownChat = randomUUID();
      for (const [name, payload] of attempts) {
        const error = await refused(bob, name, payload);
        expect({ name, error }).toEqual({
          name,
          error: { code: ErrorCode.NOT_FOUND, message: "Chat not found" },
        });
        // Exactly what a chat that does not exist at all answers: nothing is revealed.
        const missing = await refused(bob, name, { ...payload, chatId: unknownChat });
        expect(missing).toEqual(error);
      }

      // A client-chosen id that is taken by another user's chat is refused, not handed over.
      const conflict: ProtocolError = await refused(bob, "chat:create", {
        id: chatId,
        title: "mine",
      });
      expect(conflict.code).toBe(ErrorCode.CONFLICT);
      expect(JSON.stringify(conflict)).not.toContain("Alice");

      // Nothing changed in the database ...
      expect(await snapshot(chatId)).toEqual(before);
      expect(await usersRow(alice.id)).toEqual(aliceBefore);
      expect(await userState(sql, bobId)).toMatchObject({
        message_count: 0,
        total_conversations: 0,
        chats: 0,
        messages: 0,
      });
      // ... nothing was announced to either of them ...
      expect((await ok(bob, "user:stats", {})).stats).toMatchObject({
        totalConversations: 0,
        messageCount: 0,
      });
      expect(nonStats(alice.rec.events.slice(eventsBefore))).toEqual([]);
      statsStayed(alice.rec.events.slice(eventsBefore), { messageCount: 3, totalConversations: 1 });
      expect(bobEvents.events).toEqual([]);
      // ... and Alice still has her chat as it was.
      const { chats } = await ok(alice.s, "chat:list", {});
      expect(chats).toEqual([alice.chat]);
      const history = await ok(alice.s, "message:history", { chatId });
      expect(history.messages.map((m) => m.content)).toEqual(["secret 1", "secret 2", "secret 3"]);
    });

    test("a user receives none of another user's events, even with the chat id", async () => {
      const alice = await owner();
      const bob = await server.connectAs(userId("bob"));
      const bobEvents = recordEvents(bob);
      // Bob tries to subscribe to Alice's chat; it fails and must not join its stream.
      expect((await refused(bob, "chat:open", { chatId: alice.chat.id })).code).toBe(
        ErrorCode.NOT_FOUND,
      );

      // Alice on a second device does everything that produces events.
      const aliceTablet = await server.connectAs(alice.id);
      const tabletEvents = recordEvents(aliceTablet);
      const { chat: second } = await ok(aliceTablet, "chat:create", { title: "second" });
      const sent = await ok(alice.s, "message:send", {
        chatId: alice.chat.id,
        clientId: "a-4",
        content: "secret 4",
      });
      await ok(aliceTablet, "chat:rename", { chatId: alice.chat.id, title: "renamed" });
      await ok(aliceTablet, "chat:delete", { chatId: second.id });

      // Alice's devices got them (and her stats) ...
      await eventually(() =>
        expect(alice.rec.of("message:created").at(-1)).toEqual({ message: sent.message }),
      );
      await eventually(() =>
        expect(tabletEvents.of("chat:deleted")).toEqual([{ chatId: second.id }]),
      );
      await eventually(() =>
        expect(
          tabletEvents.of<{ stats: { messageCount: number } }>("stats:updated").at(-1)?.stats,
        ).toMatchObject({ messageCount: 4, totalConversations: 2 }),
      );
      expect(tabletEvents.of("chat:created")).toEqual([{ chat: second }]);

      // ... and Bob, whose connection answers a command after all of that was broadcast, got
      // nothing at all.
      expect((await ok(bob, "chat:list", {})).chats).toEqual([]);
      expect(bobEvents.events).toEqual([]);

      // Bob's own activity reaches Bob only.
      const aliceCount = alice.rec.events.length;
      const tabletCount = tabletEvents.events.length;
      const bobCreated = nextEvent(bob, "chat:created");
      const { chat: bobChat } = await ok(bob, "chat:create", { title: "bob's" });
      expect(await bobCreated).toEqual({ chat: bobChat });
      await eventually(() => expect(bobEvents.of("stats:updated")).toHaveLength(1));
      await ok(alice.s, "user:stats", {});
      await ok(aliceTablet, "user:stats", {});
      const aliceLater = alice.rec.events.slice(aliceCount);
      const tabletLater = tabletEvents.events.slice(tabletCount);
      expect(nonStats(aliceLater)).toEqual([]);
      expect(nonStats(tabletLater)).toEqual([]);
      statsStayed([...aliceLater, ...tabletLater], { messageCount: 4, totalConversations: 2 });
    });

    test("the same client id in two users' chats are two separate messages", async () => {
      const alice = await owner();
      const bob = await server.connectAs(userId("bob"));
      const { chat } = await ok(bob, "chat:create", { title: "bob" });
      const { message, duplicate } = await ok(bob, "message:send", {
        chatId: chat.id,
        clientId: "a-1",
        content: "not alice's",
      });
      expect(duplicate).toBe(false);
      expect(message.seq).toBe(1);
      const aliceMsg = (await ok(alice.s, "message:history", { chatId: alice.chat.id }))
        .messages[0];
      expect(aliceMsg?.clientId).toBe("a-1");
      expect(aliceMsg?.content).toBe("secret 1");
      expect(message.id).not.toBe(aliceMsg?.id);
    });
  });
});

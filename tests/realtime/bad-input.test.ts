/**
 * Hostile and broken input: every command with malformed payloads, unknown events, events
 * without acks, raw frames the client library would not build, and frames over the size limit.
 * Afterwards the database holds no partial rows.
 * Run on the in-memory adapter and on Redis (sharded adapter), where every emit goes through a
 * Redis publish, so a hostile frame must not break that path either.
 */
import { randomUUID } from "node:crypto";
import type postgres from "postgres";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { ErrorCode, Limits, type ProtocolError } from "../../protocol/index.js";
import { commandSchemas } from "../../server/src/protocol-schemas.js";
import { adapterBackends } from "../helpers/backends.js";
import {
  type ClientSocket,
  recordEvents,
  startTestServer,
  type TestServer,
} from "../helpers/server.js";
import {
  command,
  disconnected,
  ok,
  openSql,
  rawAck,
  rawSend,
  refused,
  untyped,
  userId,
  userState,
} from "./support.js";

/** A nested object `depth` levels deep: {a:{a:{…}}}. */
function nested(depth: number): unknown {
  let v: unknown = "leaf";
  for (let i = 0; i < depth; i++) v = { a: v };
  return v;
}

function expectInvalid(error: ProtocolError, paths: string[]) {
  expect(error.code).toBe(ErrorCode.INVALID_PAYLOAD);
  expect(typeof error.message).toBe("string");
  expect(error.message.length).toBeGreaterThan(0);
  expect(Array.isArray(error.details)).toBe(true);
  const details = error.details ?? [];
  expect(details.length).toBeGreaterThan(0);
  expect(details.length).toBeLessThanOrEqual(20);
  for (const d of details) {
    expect(typeof d.path).toBe("string");
    expect(typeof d.message).toBe("string");
    expect(d.message.length).toBeGreaterThan(0);
  }
  const got = new Set(details.map((d) => d.path));
  for (const p of paths) expect(got, `details ${JSON.stringify(details)} lack ${p}`).toContain(p);
}

const uuid = "7b0c1f5e-3f55-4c39-9a43-3a4f4f7e9c11";
const P = "(payload)";
const tooLong = "x".repeat(Limits.MAX_MESSAGE_CHARS + 1);

/** [command, payload, paths that must be named in details]. `CHAT` stands for the real chat id. */
const CHAT = "__CHAT__";
const malformed: [string, unknown, string[]][] = [
  // auth:refresh
  ["auth:refresh", {}, ["token"]],
  ["auth:refresh", { token: 5 }, ["token"]],
  ["auth:refresh", { token: "" }, ["token"]],
  ["auth:refresh", { token: "t".repeat(16_385) }, ["token"]],
  ["auth:refresh", { token: ["a"] }, ["token"]],
  ["auth:refresh", { token: "abc", userId: "user_other" }, [P]],
  // chat:list
  ["chat:list", { limit: "10" }, ["limit"]],
  ["chat:list", { limit: 0 }, ["limit"]],
  ["chat:list", { limit: Limits.MAX_PAGE_SIZE + 1 }, ["limit"]],
  ["chat:list", { limit: 2.5 }, ["limit"]],
  ["chat:list", { limit: -1 }, ["limit"]],
  ["chat:list", { cursor: 5 }, ["cursor"]],
  ["chat:list", { cursor: "c".repeat(201) }, ["cursor"]],
  ["chat:list", { cursor: "not a cursor" }, ["cursor"]],
  ["chat:list", { userId: "user_someone_else" }, [P]],
  // chat:create
  ["chat:create", { id: "not-a-uuid" }, ["id"]],
  ["chat:create", { id: 42 }, ["id"]],
  ["chat:create", { title: 5 }, ["title"]],
  ["chat:create", { title: "   \n\t " }, ["title"]],
  ["chat:create", { title: "t".repeat(Limits.MAX_TITLE_CHARS + 1) }, ["title"]],
  ["chat:create", { title: "a\u0000b" }, ["title"]],
  ["chat:create", { title: "bad \ud800 surrogate" }, ["title"]],
  ["chat:create", { title: "ok", userId: uuid }, [P]],
  ["chat:create", { title: "ok", lastSeq: 99 }, [P]],
  // chat:rename
  ["chat:rename", { chatId: CHAT }, ["title"]],
  ["chat:rename", { title: "x" }, ["chatId"]],
  ["chat:rename", { chatId: "123", title: "x" }, ["chatId"]],
  ["chat:rename", { chatId: CHAT, title: ["x"] }, ["title"]],
  ["chat:rename", { chatId: CHAT, title: "" }, ["title"]],
  ["chat:rename", { chatId: CHAT, title: "x", updatedAt: "2000-01-01" }, [P]],
  // chat:delete
  ["chat:delete", {}, ["chatId"]],
  ["chat:delete", { chatId: 42 }, ["chatId"]],
  ["chat:delete", { chatId: `${uuid}x` }, ["chatId"]],
  ["chat:delete", { chatId: CHAT, cascade: false }, [P]],
  // chat:open / chat:close
  ["chat:open", { chatId: null }, ["chatId"]],
  ["chat:open", { chatId: CHAT, limit: 0 }, ["limit"]],
  ["chat:open", { chatId: CHAT, limit: "all" }, ["limit"]],
  ["chat:close", { chatId: "x" }, ["chatId"]],
  ["chat:close", {}, ["chatId"]],
  // message:send
  ["message:send", { chatId: CHAT, clientId: "c" }, ["content"]],
  ["message:send", { chatId: CHAT, content: "hi" }, ["clientId"]],
  ["message:send", { clientId: "c", content: "hi" }, ["chatId"]],
  ["message:send", { chatId: "nope", clientId: "c", content: "hi" }, ["chatId"]],
  ["message:send", { chatId: CHAT, clientId: "c", content: 5 }, ["content"]],
  ["message:send", { chatId: CHAT, clientId: "c", content: "" }, ["content"]],
  ["message:send", { chatId: CHAT, clientId: "c", content: " \n\t\u00a0 " }, ["content"]],
  ["message:send", { chatId: CHAT, clientId: "c", content: tooLong }, ["content"]],
  ["message:send", { chatId: CHAT, clientId: "c", content: "nul \u0000 here" }, ["content"]],
  ["message:send", { chatId: CHAT, clientId: "c", content: "lone \ud800" }, ["content"]],
  ["message:send", { chatId: CHAT, clientId: "c", content: "lone \udc00 low" }, ["content"]],
  ["message:send", { chatId: CHAT, clientId: "c", content: { text: "hi" } }, ["content"]],
  ["message:send", { chatId: CHAT, clientId: "c", content: ["hi"] }, ["content"]],
  ["message:send", { chatId: CHAT, clientId: "c", content: nested(500) }, ["content"]],
  ["message:send", { chatId: CHAT, clientId: "", content: "hi" }, ["clientId"]],
  ["message:send", { chatId: CHAT, clientId: "has space", content: "hi" }, ["clientId"]],
  ["message:send", { chatId: CHAT, clientId: "ü", content: "hi" }, ["clientId"]],
  ["message:send", { chatId: CHAT, clientId: 7, content: "hi" }, ["clientId"]],
  [
    "message:send",
    { chatId: CHAT, clientId: "c".repeat(Limits.MAX_CLIENT_ID_CHARS + 1), content: "hi" },
    ["clientId"],
  ],
  ["message:send", { chatId: CHAT, clientId: "c", content: "hi", role: "assistant" }, [P]],
  ["message:send", { chatId: CHAT, clientId: "c", content: "hi", role: "system" }, [P]],
  ["message:send", { chatId: CHAT, clientId: "c", content: "hi", seq: 1 }, [P]],
  ["message:send", { chatId: CHAT, clientId: "c", content: "hi", extra: nested(500) }, [P]],
  // message:history
  ["message:history", {}, ["chatId"]],
  ["message:history", { chatId: CHAT, before: -1 }, ["before"]],
  ["message:history", { chatId: CHAT, after: 1.5 }, ["after"]],
  ["message:history", { chatId: CHAT, before: "5" }, ["before"]],
  ["message:history", { chatId: CHAT, before: Number.MAX_SAFE_INTEGER + 2 }, ["before"]],
  ["message:history", { chatId: CHAT, before: 3, after: 1 }, [P]],
  ["message:history", { chatId: CHAT, limit: Limits.MAX_PAGE_SIZE + 1 }, ["limit"]],
  ["message:history", { chatId: CHAT, order: "desc" }, [P]],
  // message:sync
  ["message:sync", { chatId: CHAT }, ["afterSeq"]],
  ["message:sync", { chatId: CHAT, afterSeq: -1 }, ["afterSeq"]],
  ["message:sync", { chatId: CHAT, afterSeq: null }, ["afterSeq"]],
  ["message:sync", { chatId: CHAT, afterSeq: "0" }, ["afterSeq"]],
  ["message:sync", { chatId: CHAT, afterSeq: 0, limit: 0 }, ["limit"]],
  ["message:sync", { afterSeq: 0 }, ["chatId"]],
  // user:stats
  ["user:stats", { userId: "user_someone_else" }, [P]],
  ["user:stats", { a: 1, b: 2 }, [P]],
];

/** Non-object payloads, for every command. */
const notObjects: [string, unknown][] = [
  ["null", null],
  ["a number", 42],
  ["a string", "chat:list"],
  ["a boolean", true],
  ["an empty array", []],
  ["an array of the right object", [{ chatId: uuid }]],
  ["a deeply nested array", JSON.parse(`${"[".repeat(2000)}${"]".repeat(2000)}`)],
];

describe.each(adapterBackends)("on the $name adapter", (adapter) => {
  let server: TestServer;
  let sql: postgres.Sql;
  /** The user every test here acts as, and one chat of theirs with one message. */
  const owner = userId("fuzz");
  let s: ClientSocket;
  let chatId: string;

  beforeAll(async () => {
    server = await startTestServer(adapter.options());
    sql = openSql(server.databaseUrl);
    s = await server.connectAs(owner);
    chatId = (await ok(s, "chat:create", { title: "target" })).chat.id;
    await ok(s, "message:send", { chatId, clientId: "seed-1", content: "seed" });
  });
  afterAll(async () => {
    await sql?.end({ timeout: 5 });
    await server?.close();
  });

  const withChat = (payload: unknown): unknown =>
    JSON.parse(JSON.stringify(payload).replaceAll(CHAT, chatId ?? uuid));

  describe("malformed payloads are refused with INVALID_PAYLOAD and details", () => {
    test.each(malformed)("%s %j", async (name, payload, paths) => {
      const error = await refused(s, name, withChat(payload));
      expectInvalid(error, paths);
    });

    const names = Object.keys(commandSchemas);
    test.each(names.flatMap((n) => notObjects.map(([label, p]) => [n, label, p] as const)))(
      "%s with %s",
      async (name, _label, payload) => {
        expectInvalid(await refused(s, name, payload), [P]);
      },
    );

    test("a payload with an own __proto__ key (role smuggling) is refused", async () => {
      const payload = JSON.parse(
        `{"chatId":"${chatId}","clientId":"proto","content":"hi","__proto__":{"role":"system"}}`,
      );
      expectInvalid(await refused(s, "message:send", payload), [P]);
    });

    test("a binary payload is refused", async () => {
      const error = await refused(s, "message:send", Buffer.from("hello"));
      expectInvalid(error, [P]);
      const inside = await refused(s, "message:send", {
        chatId,
        clientId: "bin",
        content: Buffer.from("hello"),
      });
      expectInvalid(inside, ["content"]);
    });

    test("a forged but well-formed sidebar cursor is refused as INVALID_PAYLOAD", async () => {
      // Decodes to "<digits>.<uuid>", the shape the server issues, with numbers no real
      // timestamp has.
      const answers: Record<string, unknown> = {};
      for (const micros of ["99999999999999999999", "9223372036854775807"]) {
        const cursor = Buffer.from(`${micros}.${uuid}`).toString("base64url");
        const error = await refused(s, "chat:list", { cursor });
        answers[micros] = { code: error.code, paths: error.details?.map((d) => d.path) };
      }
      expect(answers).toEqual({
        "99999999999999999999": { code: ErrorCode.INVALID_PAYLOAD, paths: ["cursor"] },
        "9223372036854775807": { code: ErrorCode.INVALID_PAYLOAD, paths: ["cursor"] },
      });
      // The socket is fine afterwards.
      expect((await ok(s, "chat:list", {})).chats.length).toBeGreaterThan(0);
    });

    test("values at the limits are accepted", async () => {
      const title = "T".repeat(Limits.MAX_TITLE_CHARS);
      const { chat } = await ok(s, "chat:create", { title });
      expect(chat.title).toBe(title);
      // The longest message, made of the characters JSON encodes most expensively (\u0001 is six
      // bytes on the wire), still fits in a frame, and is stored and returned unchanged.
      const content = "\u0001".repeat(Limits.MAX_MESSAGE_CHARS);
      const clientId = "c".repeat(Limits.MAX_CLIENT_ID_CHARS);
      const sent = await ok(s, "message:send", { chatId: chat.id, clientId, content });
      expect(sent.message.content).toBe(content);
      expect(sent.message.clientId).toBe(clientId);
      const emoji = "😀".repeat(Limits.MAX_MESSAGE_CHARS / 2);
      const second = await ok(s, "message:send", {
        chatId: chat.id,
        clientId: "emoji",
        content: emoji,
      });
      expect(second.message.content).toBe(emoji);
      const page = await ok(s, "message:history", { chatId: chat.id, limit: Limits.MAX_PAGE_SIZE });
      expect(page.messages.map((m) => m.content)).toEqual([content, emoji]);
      const [row] = await sql<{ len: number }[]>`
      select char_length(message->>'content')::int as len from chat_memory
       where session_id = ${chat.id} and client_id = ${clientId}`;
      expect(row?.len).toBe(Limits.MAX_MESSAGE_CHARS);
      // Surrounding whitespace is content, not blankness.
      const padded = await ok(s, "message:send", {
        chatId: chat.id,
        clientId: "padded",
        content: "  hi  ",
      });
      expect(padded.message.content).toBe("  hi  ");
    });

    test("a valid UUID of no chat is NOT_FOUND, not INVALID_PAYLOAD", async () => {
      const missing = randomUUID();
      for (const [name, payload] of [
        ["chat:open", { chatId: missing }],
        ["chat:rename", { chatId: missing, title: "x" }],
        ["chat:delete", { chatId: missing }],
        ["message:send", { chatId: missing, clientId: "c", content: "hi" }],
        ["message:history", { chatId: missing }],
        ["message:sync", { chatId: missing, afterSeq: 0 }],
      ] as const) {
        expect(await refused(s, name, payload)).toEqual({
          code: ErrorCode.NOT_FOUND,
          message: "Chat not found",
        });
      }
    });
  });

  describe("events that are not commands", () => {
    test.each([
      "chat:explode",
      "CHAT:LIST",
      "chat:list ",
      "message:delete",
      "admin:grant",
      "__proto__",
      "constructor",
      "toString",
      "hasOwnProperty",
    ])("%j with an ack is answered UNKNOWN_COMMAND", async (name) => {
      const error = await refused(s, name, { chatId });
      expect(error).toEqual({ code: ErrorCode.UNKNOWN_COMMAND, message: "Unknown command" });
    });

    test("a numeric event name (raw frame) is answered UNKNOWN_COMMAND", async () => {
      const ack = rawAck(s, 9101);
      rawSend(s, `29101[12345,{"chatId":"${chatId}"}]`);
      expect(await ack).toEqual({
        ok: false,
        error: { code: ErrorCode.UNKNOWN_COMMAND, message: "Unknown command" },
      });
    });

    test("a command with only an ack argument runs with an empty payload", async () => {
      const ack = (await untyped(s).timeout(10_000).emitWithAck("user:stats")) as {
        ok: boolean;
        data?: { stats: { messageCount: number } };
      };
      expect(ack.ok).toBe(true);
      expect(typeof ack.data?.stats.messageCount).toBe("number");
      const missing = await untyped(s).timeout(10_000).emitWithAck("chat:delete");
      expect(missing).toMatchObject({
        ok: false,
        error: { code: ErrorCode.INVALID_PAYLOAD, details: [{ path: "chatId" }] },
      });
    });

    test("events without an ack are dropped: nothing stored, no crash, the socket keeps working", async () => {
      const rec = recordEvents(s);
      const raw = untyped(s);
      raw.emit("chat:create", { title: "no-ack create" });
      raw.emit("message:send", { chatId, clientId: "no-ack", content: "no-ack message" });
      raw.emit("chat:rename", { chatId, title: "no-ack rename" });
      raw.emit("chat:delete", { chatId });
      raw.emit("chat:explode", { boom: true });
      raw.emit("message:send", null);
      raw.emit("message:send");
      raw.emit("chat:list", nested(1000));
      // Raw frames: an event with no arguments at all, and one with a JSON body nested deeper
      // than the client library could encode.
      rawSend(s, `2["chat:create"]`);
      rawSend(s, `2["message:send",${"[".repeat(20_000)}${"]".repeat(20_000)}]`);
      const deepAck = rawAck(s, 9102);
      rawSend(s, `29102["message:send",${"[".repeat(20_000)}${"]".repeat(20_000)}]`);

      // Frames on one connection are handled in order: this ack comes after all of the above.
      const { chats } = await ok(s, "chat:list", { limit: 200 });
      expect(s.connected).toBe(true);
      expect(chats.map((c) => c.title)).not.toContain("no-ack create");
      const deep = (await deepAck) as { ok: boolean; error?: ProtocolError };
      expect(deep.ok).toBe(false);
      expectInvalid(deep.error as ProtocolError, [P]);

      const [counts] = await sql<{ created: number; msgs: number; title: string }[]>`
      select (select count(*)::int from chat_sessions where title like 'no-ack%') as created,
             (select count(*)::int from chat_memory where client_id = 'no-ack'
                or message->>'content' = 'no-ack message') as msgs,
             (select title from chat_sessions where id = ${chatId}) as title`;
      expect(counts).toEqual({ created: 0, msgs: 0, title: "target" });
      // No event came of any of it (stats broadcasts of earlier tests may still trickle in).
      expect(rec.events.filter((e) => e.name !== "stats:updated")).toEqual([]);
      // Still a working socket.
      const sent = await ok(s, "message:send", {
        chatId,
        clientId: "after-noise",
        content: "fine",
      });
      expect(sent.duplicate).toBe(false);
    });
  });

  describe("frames and connections", () => {
    test("a frame over MAX_FRAME_BYTES disconnects that socket; the server keeps serving others", async () => {
      const victim = await server.connectAs(owner);
      const bystander = await server.connectAs(owner);
      const stranger = await server.connectAs(userId("stranger"));
      const gone = disconnected(victim);
      const huge = "x".repeat(Limits.MAX_FRAME_BYTES + 1);
      untyped(victim).emit("message:send", { chatId, clientId: "huge", content: huge }, () => {});
      const reason = await gone;
      expect(["transport close", "transport error"]).toContain(reason);
      expect(victim.connected).toBe(false);

      // Everyone else is unaffected, and new connections are accepted.
      expect((await ok(bystander, "chat:list", {})).chats.length).toBeGreaterThan(0);
      expect((await ok(stranger, "user:stats", {})).stats.messageCount).toBe(0);
      expect(s.connected).toBe(true);
      const fresh = await server.connectAs(owner);
      const after = await ok(fresh, "message:send", {
        chatId,
        clientId: "after-huge",
        content: "still here",
      });
      expect(after.duplicate).toBe(false);
      const [row] = await sql<{ n: number }[]>`
      select count(*)::int as n from chat_memory where client_id = 'huge'`;
      expect(row?.n).toBe(0);
      for (const x of [bystander, stranger, fresh]) x.disconnect();
    });

    test("a frame that is not a Socket.IO packet disconnects only that socket", async () => {
      const victim = await server.connectAs(owner);
      const bystander = await server.connectAs(owner);
      const gone = disconnected(victim);
      rawSend(victim, "2{this is not json");
      expect(typeof (await gone)).toBe("string");
      expect(victim.connected).toBe(false);
      expect((await ok(bystander, "user:stats", {})).stats.totalConversations).toBeGreaterThan(0);
      bystander.disconnect();
    });

    test("many bad commands in flight at once all get their own answer", async () => {
      const acks = await Promise.all(
        Array.from({ length: 100 }, (_, i) =>
          command(s, "message:send", { chatId, clientId: `bad-${i}`, content: i % 2 ? "" : 5 }),
        ),
      );
      for (const ack of acks) {
        expect(ack.ok).toBe(false);
        if (!ack.ok) expectInvalid(ack.error, ["content"]);
      }
    });
  });

  describe("after all of that", () => {
    test("the database has no partial rows and its counters agree", async () => {
      // Runs last in this file (tests in a file run in order).
      const state = await userState(sql, owner);
      expect(state).toBeDefined();
      expect(state?.message_count).toBe(state?.messages);
      expect(state?.total_conversations).toBe(state?.chats);

      const chats = await sql<{ id: string; last_seq: number; n: number; max_seq: number }[]>`
      select c.id, c.last_seq::int as last_seq,
             (select count(*)::int from chat_memory m where m.session_id = c.id) as n,
             (select coalesce(max(seq), 0)::int from chat_memory m where m.session_id = c.id)
               as max_seq
        from chat_sessions c`;
      expect(chats.length).toBeGreaterThan(0);
      for (const c of chats) {
        expect({ id: c.id, lastSeq: c.last_seq, maxSeq: c.max_seq }).toEqual({
          id: c.id,
          lastSeq: c.n,
          maxSeq: c.n,
        });
      }
      // Only user messages, only storable text, nothing from the refused sends.
      const [bad] = await sql<{ roles: number; tooLong: number; refused: number; users: number }[]>`
      select (select count(*)::int from chat_memory where message->>'role' <> 'user') as roles,
             (select count(*)::int from chat_memory
               where char_length(message->>'content') > ${Limits.MAX_MESSAGE_CHARS}) as "tooLong",
             (select count(*)::int from chat_memory
               where client_id in ('c', 'proto', 'bin', 'huge') or client_id like 'bad-%')
               as refused,
             (select count(*)::int from users) as users`;
      expect(bad).toEqual({ roles: 0, tooLong: 0, refused: 0, users: 2 });
      const users = await sql<{ clerk_id: string; message_count: number; n: number }[]>`
      select u.clerk_id, u.message_count,
             (select count(*)::int from chat_memory m join chat_sessions c on c.id = m.session_id
               where c.user_id = u.id) as n
        from users u`;
      for (const u of users) expect(u.message_count).toBe(u.n);
      // The owner's counters as the server reports them match the tables.
      const { stats } = await ok(s, "user:stats", {});
      expect(stats.messageCount).toBe(state?.messages);
      expect(stats.totalConversations).toBe(state?.chats);
    });
  });
});

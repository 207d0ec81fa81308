/**
 * A user deleted while one of their sockets is still connected (the Clerk webhook's transaction
 * committed, and the socket has not been closed yet: it is on a node the broadcast has not
 * reached, or its command raced the disconnect). Against a real server and Postgres, the
 * deletion is applied the way the webhook applies it (tombstone and row deletion in one
 * transaction, UserRepository.deleteByClerkId) but without closing the socket. Every write is
 * then answered NOT_FOUND, never INTERNAL, and writes nothing: no chat, no message, no users
 * row again.
 * Run on the in-memory adapter and on Redis (sharded adapter: the stream store and the limits
 * are then the Redis ones).
 */
import { randomUUID } from "node:crypto";
import type postgres from "postgres";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { UserRepository } from "../../server/src/repositories/user.repository.js";
import { adapterBackends } from "../helpers/backends.js";
import { type ClientSocket, startTestServer, type TestServer } from "../helpers/server.js";
import { command, ok, openSql, refused, userId } from "./support.js";

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

  /** A connected user with one chat and one message, then deleted behind the socket's back. */
  async function deletedBehindSocket(label: string) {
    const clerkId = userId(label);
    const socket = await server.connectAs(clerkId);
    const { chat } = await ok(socket, "chat:create", { title: "before" });
    await ok(socket, "message:send", { chatId: chat.id, clientId: "c1", content: "hello" });
    const [row] = await sql<{ id: string }[]>`select id from users where clerk_id = ${clerkId}`;
    const deletion = await new UserRepository(server.database.db).deleteByClerkId(
      clerkId,
      Date.now(),
    );
    expect(deletion).toEqual({ applied: true, deleted: true });
    expect(socket.connected).toBe(true);
    return { clerkId, socket, chatId: chat.id, dbUserId: row?.id as string };
  }

  async function nothingStored(clerkId: string, dbUserId: string, chatId?: string) {
    expect(await sql`select 1 from users where clerk_id = ${clerkId}`).toHaveLength(0);
    expect(await sql`select 1 from chat_sessions where user_id = ${dbUserId}`).toHaveLength(0);
    if (chatId) {
      expect(await sql`select 1 from chat_memory where session_id = ${chatId}`).toHaveLength(0);
    }
  }

  async function expectNotFound(socket: ClientSocket, name: string, payload: unknown) {
    const error = await refused(socket, name, payload);
    expect({ name, code: error.code }).toEqual({ name, code: "NOT_FOUND" });
    expect(error.message).not.toMatch(/violat|constraint|insert|select|sql/i);
  }

  describe("a deleted user whose socket is still connected", () => {
    test("chat:create is answered NOT_FOUND and creates nothing, with or without a chosen id", async () => {
      const { clerkId, socket, dbUserId } = await deletedBehindSocket("deleted_create");
      await expectNotFound(socket, "chat:create", { title: "after" });
      await expectNotFound(socket, "chat:create", { id: randomUUID(), title: "after, with id" });
      await expectNotFound(socket, "chat:create", {});
      await nothingStored(clerkId, dbUserId);
    });

    test("every other write and every chat command is answered NOT_FOUND and stores nothing", async () => {
      const { clerkId, socket, chatId, dbUserId } = await deletedBehindSocket("deleted_writes");
      await expectNotFound(socket, "message:send", { chatId, clientId: "c2", content: "after" });
      await expectNotFound(socket, "message:send", {
        chatId: randomUUID(),
        clientId: "c3",
        content: "after",
      });
      await expectNotFound(socket, "chat:rename", { chatId, title: "renamed" });
      await expectNotFound(socket, "chat:delete", { chatId });
      await expectNotFound(socket, "chat:open", { chatId });
      await expectNotFound(socket, "message:history", { chatId });
      await expectNotFound(socket, "message:sync", { chatId, afterSeq: 0 });
      await expectNotFound(socket, "message:stop", { chatId, streamId: "s1" });
      await nothingStored(clerkId, dbUserId, chatId);
    });

    test("reads answer what is left (nothing) rather than an error", async () => {
      const { socket } = await deletedBehindSocket("deleted_reads");
      const list = await command(socket, "chat:list", {});
      expect(list).toEqual({ ok: true, data: { chats: [], nextCursor: null } });
      const stats = await command(socket, "user:stats", {});
      expect(stats).toMatchObject({
        ok: true,
        data: { stats: { totalConversations: 0, messageCount: 0, tokenUsage: 0 } },
      });
    });
  });
});

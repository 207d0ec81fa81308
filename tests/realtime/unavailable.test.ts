/**
 * A slow database: the server's statements run under a statement_timeout, and the test holds a
 * chat's row lock so that a command cannot finish in time. The protocol promises UNAVAILABLE
 * ("nothing was stored; retry with backoff") and that a retry with the same clientId stores
 * the message once.
 *
 * On the in-memory adapter only: what is tested is Postgres's timeout. A refused command
 * neither broadcasts nor touches a shared store but the write limit it passes first (the same
 * contract on every backend, tests/stores/rate-limits.test.ts), and the retry is a plain
 * message:send (on both adapters in delivery.test.ts). Redis failing is
 * tests/faults/redis-fault.test.ts.
 */
import type postgres from "postgres";
import { afterAll, beforeAll, expect, test } from "vitest";
import { ErrorCode, retryableErrorCodes } from "../../protocol/index.js";
import { createTestDatabase, type TestDatabase } from "../helpers/db.js";
import { startTestServer, type TestServer } from "../helpers/server.js";
import { chatState, ok, openSql, refused, userId } from "./support.js";

let tdb: TestDatabase;
let server: TestServer;
let sql: postgres.Sql;

beforeAll(async () => {
  tdb = await createTestDatabase();
  const admin = openSql(tdb.url);
  // Every session opened on this database from now on, the server's pool included.
  await admin.unsafe(`alter database "${tdb.name}" set statement_timeout = '1s'`);
  await admin.end({ timeout: 5 });
  server = await startTestServer({ databaseUrl: tdb.url });
  sql = openSql(tdb.url);
});
afterAll(async () => {
  await sql?.end({ timeout: 5 });
  await server?.close();
  await tdb?.drop();
});

test("a command cut off by the database's statement timeout is UNAVAILABLE and can be retried", async () => {
  const s = await server.connectAs(userId("slowdb"));
  const { chat } = await ok(s, "chat:create", { title: "slow" });
  const payload = { chatId: chat.id, clientId: "retry-me", content: "eventually stored" };

  const answers: Record<string, unknown> = {};
  await sql.begin(async (tx) => {
    // A long transaction elsewhere holds the chat's row.
    await tx`select 1 from chat_sessions where id = ${chat.id} for update`;
    const send = await refused(s, "message:send", payload);
    const rename = await refused(s, "chat:rename", { chatId: chat.id, title: "renamed" });
    answers["message:send"] = send.code;
    answers["chat:rename"] = rename.code;
  });
  // Whatever the code, nothing was stored.
  expect(await chatState(sql, chat.id)).toMatchObject({ title: "slow", last_seq: 0, messages: 0 });

  // The database is fine again: the retry stores the message, once.
  const retried = await ok(s, "message:send", payload);
  expect(retried.duplicate).toBe(false);
  expect(retried.message.seq).toBe(1);
  expect(await chatState(sql, chat.id)).toMatchObject({ last_seq: 1, messages: 1 });

  // The documented answer for a slow or unavailable database, so the client retries it.
  expect(answers).toEqual({
    "message:send": ErrorCode.UNAVAILABLE,
    "chat:rename": ErrorCode.UNAVAILABLE,
  });
  expect(retryableErrorCodes.has(ErrorCode.UNAVAILABLE)).toBe(true);
});

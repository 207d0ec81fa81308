/**
 * Drizzle's queries run as prepared statements (db/client.ts): parsed once per connection and
 * then one round trip each, as the tagged-template queries are. Without it, postgres.js sends
 * every Drizzle query with parameters unprepared, in two round trips, parsed again each time.
 * Checked on a real Postgres through its own view of the connection's prepared statements
 * (`pg_prepared_statements`, which counts each statement's executions), on a pool of one
 * connection so that every query shares it.
 */
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { createDatabase, type DatabaseHandle } from "../../server/src/db/client.js";
import { ChatRepository } from "../../server/src/repositories/chat.repository.js";
import { UserRepository } from "../../server/src/repositories/user.repository.js";
import { createTestDatabase, type TestDatabase } from "../helpers/db.js";

let tdb: TestDatabase;
let database: DatabaseHandle;

beforeAll(async () => {
  tdb = await createTestDatabase();
  database = createDatabase(tdb.url, { max: 1 });
});
afterAll(async () => {
  await database?.close();
  await tdb?.drop();
});

/** The connection's prepared statements whose text contains `fragment`, with their runs. */
async function preparedLike(fragment: string): Promise<{ statement: string; runs: number }[]> {
  const rows = await database.sql<{ statement: string; runs: string }[]>`
    select statement, (generic_plans + custom_plans)::text as runs
      from pg_prepared_statements where statement like ${`%${fragment}%`}
       and statement not like '%pg_prepared_statements%'`;
  return rows.map((r) => ({ statement: r.statement, runs: Number(r.runs) }));
}

describe("Drizzle's queries", () => {
  test("are prepared once per connection and then run without parsing again", async () => {
    const users = new UserRepository(database.db);
    const chats = new ChatRepository(database.db, database.sql);
    const ids = await users.upsertSeenMany(["user_prepared_a"]);
    const userId = ids.get("user_prepared_a")?.id as string;
    expect(userId).toBeTruthy();
    const created = [];
    for (let i = 0; i < 3; i++) created.push(await chats.insert(userId, { title: `Chat ${i}` }));
    for (const chat of created) {
      if (typeof chat === "string") throw new Error(`insert answered ${chat}`);
      expect((await chats.find(userId, chat.id))?.title).toBe(chat.title);
    }
    // One statement each, run as often as it was called.
    expect(await preparedLike('insert into "chat_sessions"')).toEqual([
      expect.objectContaining({ runs: 3 }),
    ]);
    expect(await preparedLike('from "chat_sessions"')).toEqual([
      expect.objectContaining({ runs: 3 }),
    ]);
  });

  test("a list of users is one statement whatever its length", async () => {
    const users = new UserRepository(database.db);
    await users.upsertSeenMany(["user_prepared_b", "user_prepared_c", "user_prepared_d"]);
    await users.touchSeen(["user_prepared_b"]);
    const seen = await users.touchSeen(["user_prepared_b", "user_prepared_c", "user_missing"]);
    expect([...seen].sort()).toEqual(["user_prepared_b", "user_prepared_c"]);
    expect(await preparedLike("set last_seen_at")).toEqual([expect.objectContaining({ runs: 2 })]);
  });

  test("inside a transaction too", async () => {
    const users = new UserRepository(database.db);
    const run = () =>
      database.db.transaction(async (tx) => {
        await new UserRepository(tx as unknown as typeof database.db).findId("user_prepared_b");
      });
    await run();
    await run();
    expect(await users.findId("user_prepared_b")).toBeTruthy();
    expect(await preparedLike('from "users"')).toEqual([expect.objectContaining({ runs: 3 })]);
  });
});

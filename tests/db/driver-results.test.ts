/**
 * The database driver's results stay whole after a query that failed part-way through its rows
 * (patches/postgres+3.4.9.patch, porsager/postgres#1119). Unpatched, postgres.js kept counting
 * from the failed query's rows: the next result on that connection began with holes
 * (`[null, null, row, …]`), and `const [row] = await …` read `undefined` (seen as a chat
 * "not found" under a purge storm, tests/faults/purge-storm.test.ts). One connection, so that
 * every query shares it; a real Postgres.
 */
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { createDatabase, type DatabaseHandle } from "../../server/src/db/client.js";
import { adminSql, createTestDatabase, type TestDatabase } from "../helpers/db.js";
import { eventually } from "../helpers/server.js";

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

const three = () => database.sql<{ g: number }[]>`select g from generate_series(1, 3) g`;

describe("a result after a query that failed part-way through its rows", () => {
  test("an error on a later row: the next result is whole", async () => {
    expect([...(await three())]).toEqual([{ g: 1 }, { g: 2 }, { g: 3 }]);
    // Rows 1 and 2 reach the client; row 3 divides by zero.
    const failed = await database.sql`
      select 1000 / (3 - g) as x from generate_series(1, 5) g`.catch((e: unknown) => e);
    expect(String(failed)).toContain("division by zero");
    expect([...(await three())]).toEqual([{ g: 1 }, { g: 2 }, { g: 3 }]);
  });

  test("the backend terminated mid-result: the next result, on the new connection, is whole", async () => {
    const [me] = await database.sql<{ pid: number }[]>`select pg_backend_pid() as pid`;
    const pid = Number(me?.pid);
    // Rows 1 and 2 are produced, then row 3 sleeps; meanwhile the backend is terminated (as a
    // failover or an idle reaper would), and its FATAL error follows the rows already produced.
    const running = database.sql`
      select g, case when g = 3 then pg_sleep(30) end as s
        from generate_series(1, 5) g`.catch((e: unknown) => e);
    const admin = adminSql();
    try {
      await eventually(async () => {
        const [row] = await admin<{ n: number }[]>`
          select count(*)::int as n from pg_stat_activity
           where pid = ${pid} and wait_event = 'PgSleep'`;
        expect(row?.n).toBe(1);
      }, 10_000);
      await admin`select pg_terminate_backend(${pid})`;
    } finally {
      await admin.end();
    }
    expect(String(await running)).toMatch(/terminat|CONNECTION/i);
    // The query right after may still get the termination's error (postgres.js hands it on as
    // the connection closes); a result it gets, and every one after, is whole.
    const next = await three().catch((e: unknown) => e);
    if (next instanceof Error) expect(String(next)).toMatch(/terminat/);
    else expect([...(next as { g: number }[])]).toEqual([{ g: 1 }, { g: 2 }, { g: 3 }]);
    expect([...(await three())]).toEqual([{ g: 1 }, { g: 2 }, { g: 3 }]);
  });
});

/**
 * `runMigrations` (what `npm run db:migrate` calls): a second run changes nothing, and a run
 * on an empty database builds the whole schema.
 */
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { migrationsFolder, runMigrations } from "../../server/src/db/migrate.js";
import { adminSql, databaseUrl } from "../helpers/db.js";
import { type FileDb, makeChat, makeUser, openFileDb } from "./fixtures.js";

/** Every migration in the journal (drizzle-kit appends one entry per migration file). */
const MIGRATIONS = (
  JSON.parse(readFileSync(join(migrationsFolder, "meta", "_journal.json"), "utf8")) as {
    entries: unknown[];
  }
).entries.length;

/** A fingerprint of everything the migrations create, to compare before and after a re-run. */
async function schemaFingerprint(sql: postgres.Sql) {
  const [row] = await sql`
    select
      (select count(*)::int from drizzle.__drizzle_migrations) as migrations,
      (select array_agg(tablename::text order by tablename) from pg_tables
        where schemaname = 'public') as tables,
      (select array_agg(tgname::text order by tgname) from pg_trigger t
         join pg_class c on c.oid = t.tgrelid
        where c.relnamespace = 'public'::regnamespace and not t.tgisinternal) as triggers,
      (select array_agg(tablename || '.' || policyname order by tablename, policyname)
         from pg_policies where schemaname = 'public') as policies,
      (select array_agg(conname::text order by conname) from pg_constraint
        where connamespace = 'public'::regnamespace) as constraints,
      (select array_agg(proname::text order by proname) from pg_proc
        where pronamespace in ('public'::regnamespace, 'auth'::regnamespace)) as functions`;
  return row;
}

describe("re-running on a migrated database", () => {
  let fdb: FileDb;
  beforeAll(async () => {
    fdb = await openFileDb(2);
  });
  afterAll(async () => {
    await fdb?.close();
  });

  test("is a no-op: no error, same migration rows, same schema, data kept", async () => {
    const u = await makeUser(fdb.sql, "user_2migrate");
    const chat = await makeChat(fdb.sql, u.id);
    const before = await schemaFingerprint(fdb.sql);
    expect(before?.migrations).toBe(MIGRATIONS);

    await runMigrations(fdb.tdb.url);
    await runMigrations(fdb.tdb.url);

    expect(await schemaFingerprint(fdb.sql)).toEqual(before);
    const [row] = await fdb.sql`
      select total_conversations, last_session_id from users where id = ${u.id}`;
    expect(row).toEqual({ total_conversations: 1, last_session_id: chat });
  });
});

describe("npm run db:migrate", () => {
  const name = `t_${Math.floor(Date.now() / 1000)}_${randomBytes(6).toString("hex")}`;
  afterAll(async () => {
    const admin = adminSql();
    try {
      await admin.unsafe(`drop database if exists "${name}" with (force)`);
    } finally {
      await admin.end();
    }
  });

  const migrate = (env: Record<string, string>) =>
    spawnSync(process.execPath, ["--import", "tsx", "server/src/db/migrate-cli.ts"], {
      // Only what an operator would set: no Clerk keys, nothing else from this environment.
      env: { PATH: process.env.PATH ?? "", ...env },
      encoding: "utf8",
      timeout: 60_000,
    });

  test("in production needs DATABASE_URL and nothing else", async () => {
    const admin = adminSql();
    try {
      await admin.unsafe(`create database "${name}"`);
    } finally {
      await admin.end();
    }
    const r = migrate({ NODE_ENV: "production", DATABASE_URL: databaseUrl(name) });
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/migrations applied/);
    const sql = postgres(databaseUrl(name), { max: 1, onnotice: () => {} });
    try {
      expect((await schemaFingerprint(sql))?.migrations).toBe(MIGRATIONS);
    } finally {
      await sql.end({ timeout: 5 });
    }
  });

  test("in production without DATABASE_URL stops with a message naming it", () => {
    const r = migrate({ NODE_ENV: "production" });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/Configuration error: .*DATABASE_URL/);
  });
});

describe("a brand-new empty database", () => {
  const name = `t_${Math.floor(Date.now() / 1000)}_${randomBytes(6).toString("hex")}`;
  let sql: postgres.Sql | undefined;
  beforeAll(async () => {
    const admin = adminSql();
    try {
      await admin.unsafe(`create database "${name}"`);
    } finally {
      await admin.end();
    }
  });
  afterAll(async () => {
    await sql?.end({ timeout: 5 });
    const admin = adminSql();
    try {
      await admin.unsafe(`drop database if exists "${name}" with (force)`);
    } finally {
      await admin.end();
    }
  });

  test("gets every table, trigger, function and policy, and works", async () => {
    const url = databaseUrl(name);
    await runMigrations(url);
    sql = postgres(url, { max: 1, onnotice: () => {} });
    const fp = await schemaFingerprint(sql);
    expect(fp?.migrations).toBe(MIGRATIONS);
    expect(fp?.tables).toEqual([
      "app_event_leases",
      "app_event_settings",
      "app_events",
      "chat_memory",
      "chat_sessions",
      "search_sessions",
      "user_tombstones",
      "users",
    ]);
    expect(fp?.triggers).toEqual([
      "before_chat_message_created",
      "on_chat_message_created",
      "on_chat_messages_enqueue_events",
      "on_chat_session_created",
      "on_chats_deleted_enqueue_events",
      "on_search_session_created",
      "on_user_deleted_enqueue_events",
      "trigger_update_chat_sessions_timestamp",
      "update_users_timestamp",
    ]);
    expect(fp?.functions).toEqual(
      expect.arrayContaining(["get_user_chat_history", "get_user_stats", "jwt", "role"]),
    );
    expect(fp?.policies).toHaveLength(14);

    const u = await makeUser(sql, "user_2fresh");
    const chat = await makeChat(sql, u.id);
    const [m] = await sql`
      insert into chat_memory (session_id, message)
      values (${chat}, ${sql.json({ role: "user", content: "hi" })})
      returning seq::int as seq`;
    expect(m).toEqual({ seq: 1 });

    // And a second run on it is a no-op too.
    await runMigrations(url);
    expect(await schemaFingerprint(sql)).toEqual(fp);
  });
});

describe("the migrations' snapshots", () => {
  test("match server/src/db/schema.ts: drizzle-kit generate finds nothing to add", () => {
    // On a copy of drizzle/, so that a difference shows as a new file instead of landing here.
    const dir = mkdtempSync(join(tmpdir(), "drizzle-check-"));
    try {
      const out = join(dir, "drizzle");
      cpSync(migrationsFolder, out, { recursive: true });
      const config = join(dir, "drizzle.config.json");
      writeFileSync(
        config,
        JSON.stringify({
          dialect: "postgresql",
          // drizzle-kit takes both relative to the working directory (it prefixes "./").
          schema: "server/src/db/schema.ts",
          out: relative(process.cwd(), out),
        }),
      );
      const kit = join(process.cwd(), "node_modules/drizzle-kit/bin.cjs");
      // No TTY: a difference that needs a question (a rename or a new table) fails the run.
      const run = spawnSync(process.execPath, [kit, "generate", `--config=${config}`], {
        encoding: "utf8",
        timeout: 60_000,
      });
      expect(run.stdout + run.stderr).toContain("No schema changes");
      expect(run.status).toBe(0);
      expect(readdirSync(out).filter((f) => f.endsWith(".sql"))).toHaveLength(MIGRATIONS);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

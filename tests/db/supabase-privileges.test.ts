/**
 * The migrations on a database set up the way Supabase sets one up (issue #11, item 1): the
 * roles `anon`, `authenticated` and `service_role`, a non-superuser owner that runs the
 * migrations (Supabase's `postgres`), and default privileges that grant ALL on every new table,
 * sequence and function in `public` to the API roles (and, harsher than Supabase, to PUBLIC).
 * Plain Postgres grants nothing by default, which is why tests/db/rls.test.ts alone could not
 * see that the migrations only ever added grants.
 *
 * Proves that after the migrations the privileges are exactly those docs/schema.md lists,
 * that every attack from the issue is refused, and that everything the docs promise works,
 * including the real server connected as that owner.
 */
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import type { ChatMessage } from "../../protocol/index.js";
import { migrationsFolder, runMigrations } from "../../server/src/db/migrate.js";
import { adminSql, asRole, databaseUrl } from "../helpers/db.js";
import { startTestServer, type TestServer } from "../helpers/server.js";
import { ok, userId } from "../realtime/support.js";
import { newServiceKey, serviceClient } from "../service/support.js";
import {
  acceptedUserContents,
  addMessage,
  addSearch,
  authed,
  forgedUserMessages,
  makeChat,
  makeUser,
  pgError,
  service,
} from "./fixtures.js";

/** Supabase's migrating role is `postgres`, which is not a superuser there; this one is ours. */
const OWNER = "supabase_like_owner";
const API_ROLES = ["anon", "authenticated", "service_role"] as const;
const TABLES = ["users", "chat_sessions", "chat_memory", "search_sessions"] as const;
const TABLE_PRIVILEGES = [
  "SELECT",
  "INSERT",
  "UPDATE",
  "DELETE",
  "TRUNCATE",
  "REFERENCES",
  "TRIGGER",
];
const COLUMN_PRIVILEGES = ["SELECT", "INSERT", "UPDATE", "REFERENCES"];

const name = `t_${Math.floor(Date.now() / 1000)}_${randomBytes(6).toString("hex")}`;
const withUser = (user: string) => {
  const u = new URL(databaseUrl(name));
  u.username = user;
  return u.toString();
};
/** A superuser connection: `SET ROLE` to an API role, as PostgREST does, for the attacks. */
let sql: postgres.Sql;
/** The owner's connection: what the server uses (and what created the tables). */
let owner: postgres.Sql;

/** Creates a cluster-wide role unless it exists; other test files may be doing the same. */
async function ensureRole(admin: postgres.Sql, role: string, options: string) {
  await admin.unsafe(`
    do $$ begin
      create role ${role} ${options};
    exception when duplicate_object or unique_violation then null;
    end $$`);
}

beforeAll(async () => {
  const admin = adminSql();
  try {
    await ensureRole(admin, "anon", "nologin noinherit");
    await ensureRole(admin, "authenticated", "nologin noinherit");
    await ensureRole(admin, "service_role", "nologin noinherit");
    await ensureRole(admin, OWNER, "login createrole");
    await admin.unsafe(`create database "${name}" owner ${OWNER}`);
  } finally {
    await admin.end();
  }
  sql = postgres(databaseUrl(name), { max: 4, onnotice: () => {}, connect_timeout: 10 });
  // What a Supabase project has before its first migration.
  await sql.unsafe(`alter schema public owner to ${OWNER}`);
  await sql.unsafe(`grant usage on schema public to anon, authenticated, service_role`);
  for (const kind of ["tables", "sequences", "functions"]) {
    await sql.unsafe(`
      alter default privileges for role ${OWNER} in schema public
        grant all on ${kind} to anon, authenticated, service_role, public`);
  }
  await runMigrations(withUser(OWNER));
  owner = postgres(withUser(OWNER), { max: 4, onnotice: () => {}, connect_timeout: 10 });
});

afterAll(async () => {
  await owner?.end({ timeout: 5 });
  await sql?.end({ timeout: 5 });
  const admin = adminSql();
  try {
    await admin.unsafe(`drop database if exists "${name}" with (force)`);
  } finally {
    await admin.end();
  }
});

test("the setup is Supabase-like: non-superuser owner, default privileges for the API roles", async () => {
  const [row] = await sql`
    select r.rolsuper,
           (select tableowner from pg_tables where schemaname = 'public' and tablename = 'chat_memory') as table_owner,
           (select count(*)::int from pg_default_acl d
              where d.defaclrole = ${OWNER}::regrole and d.defaclnamespace = 'public'::regnamespace) as defaults
      from pg_roles r where r.rolname = ${OWNER}`;
  expect(row).toEqual({ rolsuper: false, table_owner: OWNER, defaults: 3 });
});

describe("exact privileges", () => {
  /** What docs/schema.md promises; everything else must be false. */
  const granted: Record<
    string,
    Record<string, { table?: string[]; columns?: Record<string, string[]> }>
  > = {
    authenticated: {
      users: { table: ["SELECT"], columns: { UPDATE: ["email", "avatar_url", "last_seen_at"] } },
      chat_sessions: {
        table: ["SELECT", "DELETE"],
        columns: { INSERT: ["id", "user_id", "title"], UPDATE: ["title"] },
      },
      chat_memory: {
        table: ["SELECT"],
        columns: { INSERT: ["id", "session_id", "message", "client_id"] },
      },
      search_sessions: {
        table: ["SELECT"],
        columns: { INSERT: ["id", "user_id", "filters", "results", "results_count", "status"] },
      },
    },
    service_role: Object.fromEntries(
      TABLES.map((t) => [t, { table: ["SELECT", "INSERT", "UPDATE", "DELETE"] }]),
    ),
  };

  test.each([...API_ROLES, "public"])(
    "%s holds exactly the documented table and column privileges",
    async (role) => {
      const problems: string[] = [];
      for (const table of TABLES) {
        const spec = granted[role]?.[table] ?? {};
        const tableWide = spec.table ?? [];
        const rows = await sql<{ privilege: string; held: boolean }[]>`
        select p as privilege, has_table_privilege(${role}, ${`public.${table}`}, p) as held
          from unnest(${TABLE_PRIVILEGES}::text[]) p`;
        for (const r of rows) {
          if (r.held !== tableWide.includes(r.privilege))
            problems.push(`${table} ${r.privilege}: ${r.held}`);
        }
        const cols = await sql<{ column: string; privilege: string; held: boolean }[]>`
        select a.attname::text as column, p as privilege,
               has_column_privilege(${role}, a.attrelid, a.attname, p) as held
          from pg_attribute a, unnest(${COLUMN_PRIVILEGES}::text[]) p
         where a.attrelid = ${`public.${table}`}::regclass and a.attnum > 0 and not a.attisdropped`;
        for (const c of cols) {
          const expected =
            tableWide.includes(c.privilege) ||
            (spec.columns?.[c.privilege] ?? []).includes(c.column);
          if (c.held !== expected) problems.push(`${table}.${c.column} ${c.privilege}: ${c.held}`);
        }
      }
      expect(problems).toEqual([]);
    },
  );

  test("no grant option is held by anyone but the owner", async () => {
    const rows = await sql`
      select c.relname, a.grantee::regrole::text as grantee, a.privilege_type
        from pg_class c, aclexplode(c.relacl) a
       where c.relnamespace = 'public'::regnamespace and c.relname = any(${[...TABLES]})
         and a.is_grantable and a.grantee <> c.relowner`;
    expect(rows).toEqual([]);
  });

  test.each([...API_ROLES, "public"])(
    "%s may execute only the documented functions",
    async (role) => {
      const rows = await sql<{ fn: string; held: boolean }[]>`
      select p.oid::regprocedure::text as fn, has_function_privilege(${role}, p.oid, 'EXECUTE') as held
        from pg_proc p where p.pronamespace = 'public'::regnamespace order by 1`;
      const callable = Object.fromEntries(rows.map((r) => [r.fn, r.held]));
      const mayCall =
        role === "authenticated"
          ? ["get_user_chat_history(text)", "get_user_stats(text)", "is_user_message(jsonb)"]
          : role === "service_role"
            ? ["get_user_chat_history(text)", "get_user_stats(text)"]
            : [];
      expect(callable).toEqual(Object.fromEntries(rows.map((r) => [r.fn, mayCall.includes(r.fn)])));
    },
  );

  test("a grant the owner cannot revoke (made by another role) fails the migration, naming it", async () => {
    const file = readFileSync(join(migrationsFolder, "0005_exact_privileges.sql"), "utf8");
    const grantor = `sb_grantor_${randomBytes(4).toString("hex")}`;
    const err = await pgError(
      sql.begin(async (tx) => {
        // Rolled back with the failure, role included (CREATE ROLE is transactional).
        await tx.unsafe(`create role ${grantor} nologin`);
        await tx.unsafe(`grant select on public.users to ${grantor} with grant option`);
        await tx.unsafe(`set local role ${grantor}`);
        await tx.unsafe("grant select on public.users to anon");
        await tx.unsafe(`set local role ${OWNER}`);
        for (const statement of file.split("--> statement-breakpoint")) await tx.unsafe(statement);
      }),
    );
    expect(err.message).toBe(
      "privileges the migration could not revoke are still granted: SELECT on users to anon",
    );
    const [left] = await sql`select count(*)::int as n from pg_roles where rolname = ${grantor}`;
    expect(left?.n).toBe(0);
  });

  /**
   * What is open that must not be, on any table or sequence in public, including those of later
   * migrations: anything for anon or PUBLIC, TRUNCATE/REFERENCES/TRIGGER for any API role.
   */
  const openObjects = (db: postgres.Sql | postgres.TransactionSql) => db<
    { relname: string; role: string; privilege: string }[]
  >`
    select c.relname::text, r.role, p as privilege
      from pg_class c, unnest(${["anon", "authenticated", "service_role", "public"]}::text[]) r(role),
           unnest(${TABLE_PRIVILEGES}::text[]) p
     where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'p', 'v', 'm', 'f')
       and has_table_privilege(r.role, c.oid, p)
       and (r.role in ('anon', 'public') or p in ('TRUNCATE', 'REFERENCES', 'TRIGGER'))
    union all
    select c.relname::text, r.role, p
      from pg_class c, unnest(${["anon", "public"]}::text[]) r(role),
           unnest(${["USAGE", "SELECT", "UPDATE"]}::text[]) p
     where c.relnamespace = 'public'::regnamespace and c.relkind = 'S'
       and has_sequence_privilege(r.role, c.oid, p)
     order by 1, 2, 3`;

  test("no table or sequence in public, including later migrations', is open to anon, PUBLIC or TRUNCATE", async () => {
    expect(await openObjects(sql)).toEqual([]);
  });

  test("that check sees a table and a sequence that the default privileges opened", async () => {
    // As the owner, the way a migration that forgot to revoke would create them; rolled back.
    const rollback = Symbol("rollback");
    let seen: { relname: string; role: string; privilege: string }[] = [];
    await owner
      .begin(async (tx) => {
        await tx`create table public.forgot_to_revoke (id bigserial primary key)`;
        seen = await openObjects(tx);
        throw rollback;
      })
      .catch((e) => {
        if (e !== rollback) throw e;
      });
    const summary = new Set(seen.map((r) => `${r.relname} ${r.role}`));
    expect(summary).toEqual(
      new Set([
        "forgot_to_revoke anon",
        "forgot_to_revoke authenticated",
        "forgot_to_revoke public",
        "forgot_to_revoke service_role",
        "forgot_to_revoke_id_seq anon",
        "forgot_to_revoke_id_seq public",
      ]),
    );
  });
});

describe("the attacks of issue #11 are refused", () => {
  const victim = { clerk: "user_2sbVictim" } as { clerk: string; id: string; chat: string };
  const attacker = { clerk: "user_2sbAttacker" } as { clerk: string; id: string; chat: string };
  const A = authed(attacker.clerk);

  beforeAll(async () => {
    for (const f of [victim, attacker]) {
      f.id = (await makeUser(owner, f.clerk)).id;
      f.chat = await makeChat(owner, f.id);
      await addMessage(owner, f.chat, `${f.clerk} says hi`);
      await addSearch(owner, f.id);
    }
  });

  /** Runs `fn` as `anon` (PostgREST without a signed-in user), rolled back. */
  async function asAnon<T>(fn: (tx: postgres.TransactionSql) => PromiseLike<T>): Promise<T> {
    const rollback = Symbol("rollback");
    let out: T | undefined;
    await sql
      .begin(async (tx) => {
        await tx`set local role anon`;
        await tx`select set_config('request.jwt.claims', '{"role":"anon"}', true)`;
        out = await fn(tx);
        throw rollback;
      })
      .catch((e) => {
        if (e !== rollback) throw e;
      });
    return out as T;
  }
  const code = async (p: PromiseLike<unknown>) => (await pgError(p)).code;

  test.each(TABLES)("TRUNCATE %s is refused to anon and authenticated (42501)", async (table) => {
    for (const cascade of ["", " cascade"]) {
      expect(await code(asAnon((tx) => tx.unsafe(`truncate public.${table}${cascade}`)))).toBe(
        "42501",
      );
      expect(
        await code(asRole(sql, A, (tx) => tx.unsafe(`truncate public.${table}${cascade}`))),
      ).toBe("42501");
    }
  });

  test.each(TABLES)(
    "anon can read, insert, update and delete nothing in %s (42501)",
    async (table) => {
      for (const stmt of [
        `select * from public.${table}`,
        `select count(*) from public.${table}`,
        `insert into public.${table} default values`,
        `update public.${table} set id = id`,
        `delete from public.${table}`,
      ]) {
        expect(await code(asAnon((tx) => tx.unsafe(stmt))), stmt).toBe("42501");
      }
    },
  );

  test("anon cannot call the functions (42501)", async () => {
    expect(
      await code(asAnon((tx) => tx`select * from public.get_user_stats(${victim.clerk})`)),
    ).toBe("42501");
    expect(
      await code(asAnon((tx) => tx`select * from public.get_user_chat_history(${victim.clerk})`)),
    ).toBe("42501");
  });

  test.each([
    ["subscription_tier = 'enterprise'"],
    ["subscription_status = 'active'"],
    ["token_usage = 0"],
    ["message_count = 0"],
    ["total_conversations = 0"],
    ["total_searches = 0"],
    ["clerk_id = 'user_2stolen'"],
  ])("authenticated cannot UPDATE users SET %s (42501)", async (set) => {
    expect(await code(asRole(sql, A, (tx) => tx.unsafe(`update users set ${set}`)))).toBe("42501");
  });

  test("authenticated cannot set a chat's last_seq or last_message, by update or insert (42501)", async () => {
    expect(await code(asRole(sql, A, (tx) => tx`update chat_sessions set last_seq = 0`))).toBe(
      "42501",
    );
    expect(
      await code(
        asRole(
          sql,
          A,
          (tx) => tx`update chat_sessions set last_message = '{"role":"user","content":"x"}'`,
        ),
      ),
    ).toBe("42501");
    expect(
      await code(
        asRole(
          sql,
          A,
          (tx) =>
            tx`insert into chat_sessions (user_id, title, last_seq) values (${attacker.id}, 'x', 1000)`,
        ),
      ),
    ).toBe("42501");
  });

  test("authenticated cannot update or delete messages or searches (42501)", async () => {
    expect(await code(asRole(sql, A, (tx) => tx`update chat_memory set message = '{}'`))).toBe(
      "42501",
    );
    expect(await code(asRole(sql, A, (tx) => tx`delete from chat_memory`))).toBe("42501");
    expect(
      await code(asRole(sql, A, (tx) => tx`update search_sessions set status = 'failed'`)),
    ).toBe("42501");
    expect(await code(asRole(sql, A, (tx) => tx`delete from search_sessions`))).toBe("42501");
    expect(
      await code(asRole(sql, A, (tx) => tx`insert into users (clerk_id) values ('user_2new')`)),
    ).toBe("42501");
  });

  test("authenticated cannot create a trigger on a table (42501)", async () => {
    expect(
      await code(
        asRole(
          sql,
          A,
          (tx) => tx`create trigger evil after insert on chat_memory
                      for each row execute function public.update_user_search_count()`,
        ),
      ),
    ).toBe("42501");
  });

  test.each(forgedUserMessages)(
    "authenticated cannot insert a forged message: $name (42501)",
    async ({ body }) => {
      expect(
        await code(
          asRole(
            sql,
            A,
            (tx) =>
              tx`insert into chat_memory (session_id, message) values (${attacker.chat}, ${JSON.stringify(body)}::jsonb)`,
          ),
        ),
      ).toBe("42501");
    },
  );

  test("nothing the attacks tried was stored", async () => {
    const [row] = await owner`
      select (select count(*)::int from users) as users,
             (select count(*)::int from chat_memory) as messages,
             (select count(*)::int from search_sessions) as searches,
             (select last_seq::int from chat_sessions where id = ${attacker.chat}) as last_seq,
             (select subscription_tier from users where id = ${attacker.id}) as tier,
             (select message_count from users where id = ${attacker.id}) as message_count`;
    expect(row).toEqual({
      users: 2,
      messages: 2,
      searches: 2,
      last_seq: 1,
      tier: "free",
      message_count: 1,
    });
  });

  describe("what docs/schema.md promises still works", () => {
    test("authenticated: own row, profile fields, chats, user messages, searches, functions", async () => {
      const out = await asRole(sql, A, async (tx) => {
        const users = await tx`select clerk_id from users`;
        const profile = await tx`
          update users set email = 'a@new.example', avatar_url = 'https://a/p.png', last_seen_at = now()
           returning email`;
        const [chat] =
          await tx`insert into chat_sessions (user_id, title) values (${attacker.id}, 'mine') returning id`;
        const renamed = (
          await tx`update chat_sessions set title = 'renamed' where id = ${chat?.id}`
        ).count;
        const stored: (number | undefined)[] = [];
        for (const { content } of acceptedUserContents) {
          const [m] = await tx<{ seq: number }[]>`
            insert into chat_memory (session_id, message, client_id)
            values (${chat?.id}, ${tx.json({ role: "user", content })}, ${`c-${stored.length}`})
            returning seq::int as seq`;
          stored.push(m?.seq);
        }
        await addSearch(tx, attacker.id);
        const deleted = (await tx`delete from chat_sessions where id = ${chat?.id}`).count;
        const history = await tx`select session_id from get_user_chat_history(${attacker.clerk})`;
        const stats = await tx`select message_count from get_user_stats(${attacker.clerk})`;
        const victims = await tx`select 1 from chat_memory where session_id = ${victim.chat}`;
        return {
          users,
          profile,
          renamed,
          stored,
          deleted,
          history,
          stats,
          victims: victims.length,
        };
      });
      expect(out).toEqual({
        users: [{ clerk_id: attacker.clerk }],
        profile: [{ email: "a@new.example" }],
        renamed: 1,
        stored: [1, 2, 3, 4, 5],
        deleted: 1,
        history: [{ session_id: attacker.chat }],
        stats: [{ message_count: 1 + acceptedUserContents.length }],
        victims: 0,
      });
    });

    test("service_role: reads, writes assistant and system rows, updates and deletes anything", async () => {
      const out = await asRole(sql, service, async (tx) => {
        const all = (await tx`select 1 from chat_memory`).length;
        const written = [];
        for (const role of ["assistant", "system"]) {
          const [m] = await tx`
            insert into chat_memory (session_id, message)
            values (${victim.chat}, ${tx.json({ role, content: `${role} reply` })})
            returning message->>'role' as role`;
          written.push(m?.role);
        }
        const tier =
          await tx`update users set subscription_tier = 'pro', token_usage = token_usage + 5
                                where id = ${victim.id} returning subscription_tier`;
        const deleted = (await tx`delete from search_sessions where user_id = ${victim.id}`).count;
        const stats = await tx`select total_searches from get_user_stats(${victim.clerk})`;
        return { all, written, tier, deleted, stats };
      });
      expect(out).toEqual({
        all: 2,
        written: ["assistant", "system"],
        tier: [{ subscription_tier: "pro" }],
        deleted: 1,
        stats: [{ total_searches: 1 }],
      });
    });

    test("service_role cannot TRUNCATE either (42501)", async () => {
      for (const table of TABLES) {
        expect(
          await code(asRole(sql, service, (tx) => tx.unsafe(`truncate public.${table} cascade`))),
        ).toBe("42501");
      }
    });

    test("a second run of the migrations as the owner changes nothing", async () => {
      const acl = () => sql`
        select relname::text, relacl::text from pg_class
         where relnamespace = 'public'::regnamespace order by relname`;
      const before = await acl();
      await runMigrations(withUser(OWNER));
      expect(await acl()).toEqual(before);
    });
  });
});

describe("the real server, connected as the non-superuser owner", () => {
  let server: TestServer;
  const KEY = newServiceKey();
  beforeAll(async () => {
    server = await startTestServer({ databaseUrl: withUser(OWNER), serviceApiKey: KEY });
  });
  afterAll(async () => {
    await server?.close();
  });

  test("stores a user's message and an assistant reply, and serves both", async () => {
    const uid = userId("sbserver");
    const s = await server.connectAs(uid);
    const { chat } = await ok(s, "chat:create", {});
    await ok(s, "message:send", { chatId: chat.id, clientId: "m1", content: "hello" });
    const api = serviceClient(server.url, KEY);
    const posted = await api.post(`/users/${uid}/chats/${chat.id}/messages`, {
      clientId: "r1",
      content: "hi, I am the assistant",
    });
    expect(posted.status).toBe(201);
    const opened = await ok(s, "chat:open", { chatId: chat.id });
    expect(opened.messages.map((m: ChatMessage) => [m.seq, m.role, m.content])).toEqual([
      [1, "user", "hello"],
      [2, "assistant", "hi, I am the assistant"],
    ]);
  });
});

/**
 * One test group per defect listed in DESIGN.md ("Defects in the seed schema"). Each asserts
 * the corrected behaviour, so each would fail on the seed schema as written.
 */
import type postgres from "postgres";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { asRole } from "../helpers/db.js";
import {
  addMessage,
  addSearch,
  authed,
  chatState,
  counters,
  type FileDb,
  makeChat,
  makeUser,
  openFileDb,
  pgError,
  service,
} from "./fixtures.js";

let fdb: FileDb;
let sql: postgres.Sql;
beforeAll(async () => {
  fdb = await openFileDb();
  sql = fdb.sql;
});
afterAll(async () => {
  await fdb?.close();
});

const TABLES = ["users", "chat_sessions", "chat_memory", "search_sessions"];

describe("defect 1: one trigger counts a new chat", () => {
  test("defect 1: one chat bumps total_conversations by exactly 1", async () => {
    const u = await makeUser(sql, "user_2d1counting");
    expect((await counters(sql, u.id)).total_conversations).toBe(0);
    await makeChat(sql, u.id);
    expect((await counters(sql, u.id)).total_conversations).toBe(1);
    await makeChat(sql, u.id);
    expect((await counters(sql, u.id)).total_conversations).toBe(2);
  });

  test("defect 1: exactly one AFTER INSERT trigger on chat_sessions updates users", async () => {
    const rows = await sql<{ tgname: string; src: string }[]>`
      select t.tgname, p.prosrc as src
        from pg_trigger t join pg_proc p on p.oid = t.tgfoid
       where t.tgrelid = 'public.chat_sessions'::regclass
         and not t.tgisinternal
         and (t.tgtype & 4) <> 0   -- INSERT
         and (t.tgtype & 2) = 0    -- not BEFORE
         and (t.tgtype & 64) = 0   -- not INSTEAD OF`;
    const touchingUsers = rows.filter((r) => /\busers\b/i.test(r.src));
    expect(touchingUsers.map((r) => r.tgname)).toEqual(["on_chat_session_created"]);
    expect(rows.map((r) => r.tgname)).not.toContain("trigger_update_user_conversations");
  });
});

describe("defect 2: chat_memory.session_id is NOT NULL", () => {
  test("defect 2: a message without a session fails with not_null_violation", async () => {
    const err = await pgError(
      sql`insert into chat_memory (message) values (${sql.json({ role: "user", content: "x" })})`,
    );
    expect(err.code).toBe("23502");
    expect(err.column_name).toBe("session_id");
  });

  test("defect 2: an explicit NULL session_id fails too, even as service_role", async () => {
    const err = await pgError(
      asRole(
        sql,
        service,
        (tx) =>
          tx`insert into chat_memory (session_id, message)
             values (null, ${tx.json({ role: "user", content: "x" })})`,
      ),
    );
    expect(err.code).toBe("23502");
    const [col] = await sql`
      select is_nullable from information_schema.columns
       where table_schema = 'public' and table_name = 'chat_memory' and column_name = 'session_id'`;
    expect(col?.is_nullable).toBe("NO");
  });
});

describe("defect 3: message id and a stable order", () => {
  test("defect 3: chat_memory.id is a uuid and seq is a NOT NULL bigint", async () => {
    const cols = await sql<{ column_name: string; data_type: string; is_nullable: string }[]>`
      select column_name, data_type, is_nullable from information_schema.columns
       where table_schema = 'public' and table_name = 'chat_memory'
         and column_name in ('id', 'seq') order by column_name`;
    expect(cols).toEqual([
      { column_name: "id", data_type: "uuid", is_nullable: "NO" },
      { column_name: "seq", data_type: "bigint", is_nullable: "NO" },
    ]);
  });

  test("defect 3: messages written in one transaction share created_at but get seq 1..n in order", async () => {
    const u = await makeUser(sql, "user_2d3order");
    const chat = await makeChat(sql, u.id);
    const written = await sql.begin(async (tx) => {
      const out: string[] = [];
      for (let i = 1; i <= 5; i++) out.push((await addMessage(tx, chat, `m${i}`)).id);
      return out;
    });
    const rows = await sql<{ id: string; seq: number }[]>`
      select id, seq::int as seq from chat_memory where session_id = ${chat} order by seq`;
    const [times] = await sql`
      select count(distinct created_at)::int as n from chat_memory where session_id = ${chat}`;
    expect(times?.n).toBe(1);
    expect(rows.map((r) => r.seq)).toEqual([1, 2, 3, 4, 5]);
    expect(rows.map((r) => r.id)).toEqual(written);
  });
});

describe("defect 4: circular foreign keys", () => {
  test("defect 4: both foreign keys exist with the seed's delete actions", async () => {
    const fks = await sql<{ conname: string; tbl: string; ref: string; deltype: string }[]>`
      select conname, conrelid::regclass::text as tbl, confrelid::regclass::text as ref,
             confdeltype::text as deltype
        from pg_constraint
       where contype = 'f'
         and conname in ('users_last_session_id_fkey', 'chat_sessions_user_id_fkey')
       order by conname`;
    expect(fks).toEqual([
      { conname: "chat_sessions_user_id_fkey", tbl: "chat_sessions", ref: "users", deltype: "c" },
      { conname: "users_last_session_id_fkey", tbl: "users", ref: "chat_sessions", deltype: "n" },
    ]);
  });

  test("defect 4: the circular pair is usable: a chat becomes the user's last session", async () => {
    const u = await makeUser(sql, "user_2d4circle");
    const chat = await makeChat(sql, u.id);
    expect((await counters(sql, u.id)).last_session_id).toBe(chat);
    const err = await pgError(
      sql`update users set last_session_id = gen_random_uuid() where id = ${u.id}`,
    );
    expect(err.code).toBe("23503");
  });
});

describe("defect 5: tables before policies", () => {
  test("defect 5: RLS is enabled on all four tables and each has policies", async () => {
    const rls = await sql<{ relname: string; relrowsecurity: boolean }[]>`
      select relname, relrowsecurity from pg_class
       where relnamespace = 'public'::regnamespace and relname = any(${TABLES})
       order by relname`;
    expect(rls).toEqual([...TABLES].sort().map((relname) => ({ relname, relrowsecurity: true })));
    const policies = await sql<{ tablename: string; n: number }[]>`
      select tablename, count(*)::int as n from pg_policies
       where schemaname = 'public' group by tablename order by tablename`;
    expect(policies).toEqual([
      { tablename: "chat_memory", n: 3 },
      { tablename: "chat_sessions", n: 5 },
      { tablename: "search_sessions", n: 3 },
      { tablename: "users", n: 3 },
    ]);
  });
});

describe("defect 6: Clerk ids are not uuids", () => {
  test("defect 6: claims with a non-uuid Clerk sub work for reads and writes", async () => {
    const clerkId = "user_2NNEqL2nrIRdJ194ndJqAHwEfxC";
    const u = await makeUser(sql, clerkId);
    const result = await asRole(sql, authed(clerkId), async (tx) => {
      const me = await tx`select clerk_id from users`;
      const chat = await makeChat(tx, u.id, "clerk chat");
      const msg = await addMessage(tx, chat, "hello");
      const sub = await tx`select auth.jwt() ->> 'sub' as sub`;
      return { me, msg, sub };
    });
    expect(result.me.map((r) => r.clerk_id)).toEqual([clerkId]);
    expect(result.msg.seq).toBe(1);
    expect(result.sub[0]?.sub).toBe(clerkId);
  });

  test("defect 6: no policy uses auth.uid()", async () => {
    const rows = await sql`
      select policyname from pg_policies
       where schemaname = 'public'
         and (coalesce(qual, '') ilike '%uid()%' or coalesce(with_check, '') ilike '%uid()%')`;
    expect(rows).toHaveLength(0);
  });
});

describe("defect 7: the service-role policy is permissive", () => {
  test("defect 7: an authenticated user reads their own row", async () => {
    const u = await makeUser(sql, "user_2d7reader");
    const rows = await asRole(
      sql,
      authed("user_2d7reader"),
      (tx) => tx`select id, clerk_id from users where clerk_id = 'user_2d7reader'`,
    );
    expect(rows).toEqual([{ id: u.id, clerk_id: "user_2d7reader" }]);
  });

  test("defect 7: no restrictive policies on any table", async () => {
    const restrictive = await sql`
      select policyname from pg_policies
       where schemaname = 'public' and permissive <> 'PERMISSIVE'`;
    expect(restrictive).toHaveLength(0);
    const [svc] = await sql`
      select permissive, roles::text[] as roles from pg_policies
       where schemaname = 'public' and tablename = 'users'
         and policyname = 'Service role can manage users'`;
    expect(svc).toEqual({ permissive: "PERMISSIVE", roles: ["service_role"] });
  });
});

describe("defect 8: users change only their profile fields", () => {
  const clerkId = "user_2d8profile";
  let userId: string;
  beforeAll(async () => {
    userId = (await makeUser(sql, clerkId)).id;
    await sql`update users set token_usage = 5000, message_count = 7 where id = ${userId}`;
  });

  test.each([
    ["subscription_tier", "update users set subscription_tier = 'enterprise'"],
    ["subscription_status", "update users set subscription_status = 'active'"],
    ["token_usage", "update users set token_usage = 0"],
    ["message_count", "update users set message_count = 0"],
    ["total_conversations", "update users set total_conversations = 0"],
    ["total_searches", "update users set total_searches = 0"],
    ["clerk_id", "update users set clerk_id = 'user_2someoneelse'"],
    ["id", "update users set id = gen_random_uuid()"],
  ])("defect 8: a user cannot update %s (42501)", async (_col, stmt) => {
    const err = await pgError(
      asRole(sql, authed(clerkId), (tx) => tx.unsafe(`${stmt} where clerk_id = $1`, [clerkId])),
    );
    expect(err.code).toBe("42501");
    const c = await counters(sql, userId);
    expect(c.token_usage).toBe(5000);
    expect(c.message_count).toBe(7);
    const [row] = await sql`select subscription_tier, clerk_id from users where id = ${userId}`;
    expect(row).toEqual({ subscription_tier: "free", clerk_id: clerkId });
  });

  test("defect 8: a user can change email, avatar_url and last_seen_at", async () => {
    const rows = await asRole(
      sql,
      authed(clerkId),
      (tx) =>
        tx`update users set email = 'new@example.com', avatar_url = 'https://img/x.png',
                  last_seen_at = '2030-01-01T00:00:00Z'
            where clerk_id = ${clerkId}
            returning email, avatar_url, last_seen_at`,
      { commit: true },
    );
    expect(rows).toEqual([
      {
        email: "new@example.com",
        avatar_url: "https://img/x.png",
        last_seen_at: new Date("2030-01-01T00:00:00Z"),
      },
    ]);
    const [row] = await sql`select email, avatar_url from users where id = ${userId}`;
    expect(row).toEqual({ email: "new@example.com", avatar_url: "https://img/x.png" });
  });
});

describe("defect 9: users can delete their own chats", () => {
  test("defect 9: deleting an own chat works and cascades to its messages", async () => {
    const u = await makeUser(sql, "user_2d9deleter");
    const chat = await makeChat(sql, u.id);
    await addMessage(sql, chat, "one");
    await addMessage(sql, chat, "two");
    const count = await asRole(
      sql,
      authed("user_2d9deleter"),
      async (tx) => (await tx`delete from chat_sessions where id = ${chat}`).count,
      { commit: true },
    );
    expect(count).toBe(1);
    const [left] = await sql`
      select (select count(*)::int from chat_sessions where id = ${chat}) as chats,
             (select count(*)::int from chat_memory where session_id = ${chat}) as messages`;
    expect(left).toEqual({ chats: 0, messages: 0 });
  });

  test("defect 9: deleting another user's chat affects 0 rows", async () => {
    await makeUser(sql, "user_2d9intruder");
    const victim = await makeUser(sql, "user_2d9victim");
    const chat = await makeChat(sql, victim.id);
    await addMessage(sql, chat, "keep me");
    const count = await asRole(
      sql,
      authed("user_2d9intruder"),
      async (tx) => (await tx`delete from chat_sessions where id = ${chat}`).count,
      { commit: true },
    );
    expect(count).toBe(0);
    expect((await chatState(sql, chat)).last_seq).toBe(1);
  });
});

describe("defect 10: the helper functions do not leak", () => {
  let alice: string;
  beforeAll(async () => {
    alice = (await makeUser(sql, "user_2d10alice")).id;
    await makeUser(sql, "user_2d10mallory");
    const chat = await makeChat(sql, alice, "alice's secret");
    await addMessage(sql, chat, "secret");
  });

  test("defect 10: both functions are SECURITY INVOKER", async () => {
    const rows = await sql`
      select proname, prosecdef from pg_proc
       where pronamespace = 'public'::regnamespace
         and proname in ('get_user_chat_history', 'get_user_stats')
       order by proname`;
    expect(rows).toEqual([
      { proname: "get_user_chat_history", prosecdef: false },
      { proname: "get_user_stats", prosecdef: false },
    ]);
  });

  test("defect 10: an authenticated caller gets nothing for another user's clerk id", async () => {
    const out = await asRole(sql, authed("user_2d10mallory"), async (tx) => ({
      history: await tx`select * from get_user_chat_history('user_2d10alice')`,
      stats: await tx`select * from get_user_stats('user_2d10alice')`,
    }));
    expect(out.history).toHaveLength(0);
    expect(out.stats).toHaveLength(0);
  });

  test("defect 10: the caller gets their own, and service_role gets anyone's", async () => {
    const own = await asRole(sql, authed("user_2d10alice"), async (tx) => ({
      history: await tx`select title from get_user_chat_history('user_2d10alice')`,
      stats:
        await tx`select total_conversations, message_count from get_user_stats('user_2d10alice')`,
    }));
    expect(own.history).toEqual([{ title: "alice's secret" }]);
    expect(own.stats).toEqual([{ total_conversations: 1, message_count: 1 }]);
    const svc = await asRole(sql, service, async (tx) => ({
      history: await tx`select title from get_user_chat_history('user_2d10alice')`,
      stats: await tx`select total_conversations from get_user_stats('user_2d10alice')`,
    }));
    expect(svc.history).toEqual([{ title: "alice's secret" }]);
    expect(svc.stats).toEqual([{ total_conversations: 1 }]);
  });
});

describe("defect 11: last_message and the sidebar", () => {
  test("defect 11: every writer's message updates last_message and updated_at", async () => {
    const clerkId = "user_2d11writer";
    const u = await makeUser(sql, clerkId);
    const chat = await makeChat(sql, u.id);
    const writers: [string, (content: string) => Promise<unknown>][] = [
      ["table owner", (c) => addMessage(sql, chat, c)],
      [
        "service_role",
        (c) => asRole(sql, service, (tx) => addMessage(tx, chat, c), { commit: true }),
      ],
      [
        "authenticated",
        (c) => asRole(sql, authed(clerkId), (tx) => addMessage(tx, chat, c), { commit: true }),
      ],
    ];
    for (const [name, write] of writers) {
      const before = await chatState(sql, chat);
      await write(`from ${name}`);
      const after = await chatState(sql, chat);
      expect(after.last_message, name).toEqual({ role: "user", content: `from ${name}` });
      expect(after.updated_us, name).toBeGreaterThan(before.updated_us);
    }
  });

  test("defect 11: last_message is set in the same transaction as the insert", async () => {
    const u = await makeUser(sql, "user_2d11tx");
    const chat = await makeChat(sql, u.id);
    const seen = await sql.begin(async (tx) => {
      await addMessage(tx, chat, "inside");
      const [row] = await tx`select last_message from chat_sessions where id = ${chat}`;
      return row?.last_message;
    });
    expect(seen).toEqual({ role: "user", content: "inside" });
  });

  test("defect 11: get_user_chat_history returns last_message, newest activity first", async () => {
    const clerkId = "user_2d11history";
    const u = await makeUser(sql, clerkId);
    const c1 = await makeChat(sql, u.id, "first");
    const c2 = await makeChat(sql, u.id, "second");
    const c3 = await makeChat(sql, u.id, "third");
    await addMessage(sql, c2, "old in second");
    await addMessage(sql, c1, "latest in first");
    const rows = await asRole(
      sql,
      authed(clerkId),
      (tx) => tx`select session_id, title, last_message from get_user_chat_history(${clerkId})`,
    );
    expect(rows).toEqual([
      {
        session_id: c1,
        title: "first",
        last_message: { role: "user", content: "latest in first" },
      },
      { session_id: c2, title: "second", last_message: { role: "user", content: "old in second" } },
      { session_id: c3, title: "third", last_message: null },
    ]);
  });

  test("defect 11: the history function no longer reads chat_memory", async () => {
    const [row] = await sql`
      select prosrc from pg_proc
       where pronamespace = 'public'::regnamespace and proname = 'get_user_chat_history'`;
    expect(row?.prosrc).toMatch(/last_message/);
    expect(row?.prosrc).not.toMatch(/chat_memory/);
  });
});

describe("defect 12: no uuid-ossp", () => {
  test("defect 12: uuid-ossp is not installed and uuid_generate_v4 does not exist", async () => {
    const ext = await sql`select extname from pg_extension where extname = 'uuid-ossp'`;
    expect(ext).toHaveLength(0);
    const [fn] = await sql`select to_regproc('uuid_generate_v4')::text as f`;
    expect(fn?.f).toBeNull();
  });

  test("defect 12: every uuid id defaults to gen_random_uuid()", async () => {
    const rows = await sql`
      select table_name, column_default from information_schema.columns
       where table_schema = 'public' and column_name = 'id' and table_name = any(${TABLES})
       order by table_name`;
    expect(rows).toEqual(
      [...TABLES].sort().map((table_name) => ({ table_name, column_default: "gen_random_uuid()" })),
    );
    const v4 = await sql`
      select table_name, column_name from information_schema.columns
       where table_schema = 'public' and column_default ilike '%uuid_generate_v4%'`;
    expect(v4).toHaveLength(0);
    const u = await makeUser(sql, "user_2d12ids");
    expect(u.id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  });
});

describe("defect 13: lifetime counters", () => {
  test("defect 13: deleting a chat (and a search) does not lower the counters", async () => {
    const clerkId = "user_2d13counters";
    const u = await makeUser(sql, clerkId);
    const c1 = await makeChat(sql, u.id);
    const c2 = await makeChat(sql, u.id);
    await addMessage(sql, c1, "a");
    await addMessage(sql, c1, "b");
    await addMessage(sql, c2, "c");
    const search = await addSearch(sql, u.id);
    const before = await counters(sql, u.id);
    expect(before).toMatchObject({ total_conversations: 2, message_count: 3, total_searches: 1 });

    // The user deletes one chat under RLS, the service role deletes the other and the search.
    await asRole(sql, authed(clerkId), (tx) => tx`delete from chat_sessions where id = ${c1}`, {
      commit: true,
    });
    await asRole(
      sql,
      service,
      async (tx) => {
        await tx`delete from chat_sessions where id = ${c2}`;
        await tx`delete from search_sessions where id = ${search}`;
      },
      { commit: true },
    );
    const after = await counters(sql, u.id);
    expect(after).toMatchObject({ total_conversations: 2, message_count: 3, total_searches: 1 });
    const [left] = await sql`select count(*)::int as n from chat_sessions where user_id = ${u.id}`;
    expect(left?.n).toBe(0);
  });
});

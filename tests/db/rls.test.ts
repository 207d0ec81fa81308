/**
 * Row-level security and grants, the way the API roles see them: `authenticated` with a Clerk
 * `sub`, and `service_role`. Every statement runs in a transaction that is rolled back unless
 * a test says otherwise, so the fixture rows stay as they were created in beforeAll.
 */
import type postgres from "postgres";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { clientIdSchema, contentSchema } from "../../server/src/protocol-schemas.js";
import { asRole, type Claims } from "../helpers/db.js";
import {
  acceptedUserContents,
  addMessage,
  addSearch,
  authed,
  chatState,
  counters,
  type FileDb,
  forgedUserMessages,
  makeChat,
  makeUser,
  openFileDb,
  pgError,
  service,
} from "./fixtures.js";

let fdb: FileDb;
let sql: postgres.Sql;

interface Fixture {
  clerk: string;
  id: string;
  chat: string;
  messages: string[];
  search: string;
}
const alice = { clerk: "user_2aliceRLSxyz" } as Fixture;
const bob = { clerk: "user_2bobRLSxyz" } as Fixture;
const A = authed(alice.clerk);

beforeAll(async () => {
  fdb = await openFileDb();
  sql = fdb.sql;
  for (const f of [alice, bob]) {
    f.id = (await makeUser(sql, f.clerk)).id;
    f.chat = await makeChat(sql, f.id, `${f.clerk}'s chat`);
    f.messages = [
      (await addMessage(sql, f.chat, `${f.clerk} one`)).id,
      (await addMessage(sql, f.chat, `${f.clerk} two`)).id,
    ];
    f.search = await addSearch(sql, f.id);
  }
});
afterAll(async () => {
  await fdb?.close();
});

/** Runs one statement under `claims` (rolled back) and returns the number of rows affected. */
async function affected(
  claims: Claims,
  q: (tx: postgres.TransactionSql) => postgres.PendingQuery<postgres.Row[]>,
) {
  return asRole(sql, claims, async (tx) => (await q(tx)).count);
}

/** Runs one statement under `claims` and returns the Postgres error code it fails with. */
async function failure(
  claims: Claims,
  q: (tx: postgres.TransactionSql) => PromiseLike<unknown>,
): Promise<string> {
  return (await pgError(asRole(sql, claims, q))).code;
}

const msg = (content: string) => ({ role: "user", content });

describe("authenticated: users", () => {
  test("sees only their own row", async () => {
    const rows = await asRole(sql, A, (tx) => tx`select id, clerk_id from users`);
    expect(rows).toEqual([{ id: alice.id, clerk_id: alice.clerk }]);
    const bobs = await asRole(sql, A, (tx) => tx`select id from users where id = ${bob.id}`);
    expect(bobs).toHaveLength(0);
  });

  test("cannot insert a user row", async () => {
    expect(
      await failure(A, (tx) => tx`insert into users (clerk_id) values (${"user_2newRLS"})`),
    ).toBe("42501");
  });

  test("updates own profile fields", async () => {
    const rows = await asRole(
      sql,
      A,
      (tx) => tx`
        update users set email = 'alice@new.example', avatar_url = 'https://a/p.png',
                         last_seen_at = now()
         where id = ${alice.id} returning email, avatar_url`,
    );
    expect(rows).toEqual([{ email: "alice@new.example", avatar_url: "https://a/p.png" }]);
  });

  test.each([
    "subscription_tier",
    "subscription_status",
    "token_usage",
    "message_count",
    "total_conversations",
    "total_searches",
    "last_session_id",
    "clerk_id",
    "updated_at",
    "created_at",
  ])("cannot update own %s (42501)", async (column) => {
    const value: Record<string, string | number | null> = {
      subscription_tier: "pro",
      subscription_status: "active",
      token_usage: 0,
      message_count: 0,
      total_conversations: 0,
      total_searches: 0,
      last_session_id: null,
      clerk_id: "user_2stolen",
      updated_at: "2000-01-01T00:00:00Z",
      created_at: "2000-01-01T00:00:00Z",
    };
    const code = await failure(
      A,
      (tx) =>
        tx`update users set ${tx({ [column]: value[column] }, column)} where id = ${alice.id}`,
    );
    expect(code).toBe("42501");
  });

  test("cannot update another user's row (0 rows) and the row is unchanged", async () => {
    const n = await asRole(
      sql,
      A,
      async (tx) => (await tx`update users set email = 'pwned' where id = ${bob.id}`).count,
      { commit: true },
    );
    expect(n).toBe(0);
    const [row] = await sql`select email from users where id = ${bob.id}`;
    expect(row?.email).toBe(`${bob.clerk}@example.com`);
  });

  test("cannot delete any user row", async () => {
    expect(await failure(A, (tx) => tx`delete from users where id = ${alice.id}`)).toBe("42501");
    expect(await failure(A, (tx) => tx`delete from users where id = ${bob.id}`)).toBe("42501");
  });

  test("without a sub claim sees nothing", async () => {
    const rows = await asRole(sql, { role: "authenticated" }, async (tx) => ({
      users: (await tx`select 1 from users`).length,
      chats: (await tx`select 1 from chat_sessions`).length,
      messages: (await tx`select 1 from chat_memory`).length,
      searches: (await tx`select 1 from search_sessions`).length,
    }));
    expect(rows).toEqual({ users: 0, chats: 0, messages: 0, searches: 0 });
  });
});

describe("authenticated: chat_sessions", () => {
  test("sees only own chats", async () => {
    const rows = await asRole(sql, A, (tx) => tx`select id from chat_sessions`);
    expect(rows).toEqual([{ id: alice.chat }]);
    expect(await affected(A, (tx) => tx`select 1 from chat_sessions where id = ${bob.chat}`)).toBe(
      0,
    );
  });

  test("creates an own chat; the counter trigger runs", async () => {
    const out = await asRole(sql, A, async (tx) => {
      const [row] = await tx`
        insert into chat_sessions (user_id) values (${alice.id}) returning id, title`;
      const [me] = await tx`select total_conversations, last_session_id from users`;
      return { row, me };
    });
    expect(out.row?.title).toBe("New Chat");
    expect(out.me).toEqual({ total_conversations: 2, last_session_id: out.row?.id });
  });

  test("cannot create a chat with another user's user_id", async () => {
    expect(
      await failure(
        A,
        (tx) => tx`insert into chat_sessions (user_id, title) values (${bob.id}, 'x')`,
      ),
    ).toBe("42501");
    expect((await counters(sql, bob.id)).total_conversations).toBe(1);
  });

  test.each([
    ["last_message", { last_message: { role: "user", content: "fake" } }],
    ["last_seq", { last_seq: 100 }],
    ["updated_at", { updated_at: "2000-01-01T00:00:00Z" }],
  ])("cannot set %s on insert (42501)", async (_name, extra) => {
    const row = { user_id: alice.id, title: "x", ...extra };
    const code = await failure(A, (tx) => tx`insert into chat_sessions ${tx(row)}`);
    expect(code).toBe("42501");
  });

  test("renames an own chat", async () => {
    const rows = await asRole(
      sql,
      A,
      (tx) =>
        tx`update chat_sessions set title = 'renamed' where id = ${alice.chat} returning title`,
    );
    expect(rows).toEqual([{ title: "renamed" }]);
  });

  test("cannot rename another user's chat (0 rows)", async () => {
    const n = await asRole(
      sql,
      A,
      async (tx) =>
        (await tx`update chat_sessions set title = 'pwned' where id = ${bob.chat}`).count,
      { commit: true },
    );
    expect(n).toBe(0);
    expect((await chatState(sql, bob.chat)).title).toBe(`${bob.clerk}'s chat`);
  });

  test("cannot move an own chat to another user", async () => {
    expect(
      await failure(
        A,
        (tx) => tx`update chat_sessions set user_id = ${bob.id} where id = ${alice.chat}`,
      ),
    ).toBe("42501");
    expect((await chatState(sql, alice.chat)).user_id).toBe(alice.id);
  });

  test.each([
    ["last_message", { last_message: { role: "user", content: "fake" } }],
    ["last_seq", { last_seq: 0 }],
    ["updated_at", { updated_at: "2000-01-01T00:00:00Z" }],
    ["created_at", { created_at: "2000-01-01T00:00:00Z" }],
    ["id", { id: "00000000-0000-4000-8000-000000000000" }],
  ])("cannot update %s of an own chat (42501)", async (_name, set) => {
    const code = await failure(
      A,
      (tx) => tx`update chat_sessions set ${tx(set)} where id = ${alice.chat}`,
    );
    expect(code).toBe("42501");
  });

  test("deletes an own chat, cascading to its messages", async () => {
    const out = await asRole(sql, A, async (tx) => {
      const n = (await tx`delete from chat_sessions where id = ${alice.chat}`).count;
      const [left] = await tx`
        select count(*)::int as n from chat_memory where session_id = ${alice.chat}`;
      return { n, left: left?.n };
    });
    expect(out).toEqual({ n: 1, left: 0 });
  });

  test("cannot delete another user's chat (0 rows)", async () => {
    const n = await asRole(
      sql,
      A,
      async (tx) => (await tx`delete from chat_sessions where id = ${bob.chat}`).count,
      { commit: true },
    );
    expect(n).toBe(0);
    expect((await chatState(sql, bob.chat)).last_seq).toBe(2);
  });
});

describe("authenticated: chat_memory", () => {
  test("sees only messages in own chats", async () => {
    const rows = await asRole(sql, A, (tx) => tx`select id from chat_memory order by seq`);
    expect(rows.map((r) => r.id)).toEqual(alice.messages);
    const bobs = await asRole(
      sql,
      A,
      (tx) => tx`select id from chat_memory where session_id = ${bob.chat}`,
    );
    expect(bobs).toHaveLength(0);
  });

  test("adds a message to an own chat, with a client_id", async () => {
    const out = await asRole(sql, A, async (tx) => {
      const m = await addMessage(tx, alice.chat, "from alice", "alice-client-1");
      const [chat] = await tx`select last_message from chat_sessions where id = ${alice.chat}`;
      return { m, chat };
    });
    expect(out.m).toMatchObject({ seq: 3, client_id: "alice-client-1" });
    expect(out.chat?.last_message).toEqual(msg("from alice"));
  });

  test("cannot add a message to another user's chat, and that chat is unchanged", async () => {
    const before = await chatState(sql, bob.chat);
    expect(await failure(A, (tx) => addMessage(tx, bob.chat, "intrusion"))).toBe("42501");
    expect(await chatState(sql, bob.chat)).toEqual(before);
    expect((await counters(sql, bob.id)).message_count).toBe(2);
  });

  test.each([
    ["seq", { seq: 1000 }],
    ["created_at", { created_at: "2000-01-01T00:00:00Z" }],
  ])("cannot set %s on insert (42501)", async (_name, extra) => {
    const row = { session_id: alice.chat, message: msg("x"), ...extra };
    expect(await failure(A, (tx) => tx`insert into chat_memory ${tx(row)}`)).toBe("42501");
  });

  test("cannot update or delete messages, own or not", async () => {
    for (const id of [alice.messages[0], bob.messages[0]]) {
      expect(
        await failure(
          A,
          (tx) =>
            tx`update chat_memory set message = ${tx.json(msg("edited"))} where id = ${id ?? ""}`,
        ),
      ).toBe("42501");
      expect(await failure(A, (tx) => tx`delete from chat_memory where id = ${id ?? ""}`)).toBe(
        "42501",
      );
    }
    const [row] = await sql`select count(*)::int as n from chat_memory`;
    expect(row?.n).toBe(4);
  });
});

describe("authenticated: only what message:send accepts (issue #11, item 2)", () => {
  test.each(forgedUserMessages)(
    "refuses a forged message: $name (42501)",
    async ({ body, content }) => {
      if (content !== undefined) expect(contentSchema.safeParse(content).success).toBe(false);
      const before = await chatState(sql, alice.chat);
      const code = await failure(
        A,
        (tx) => tx`
        insert into chat_memory (session_id, message)
        values (${alice.chat}, ${JSON.stringify(body)}::jsonb)`,
      );
      expect(code).toBe("42501");
      expect(await chatState(sql, alice.chat)).toEqual(before);
    },
  );

  test.each(acceptedUserContents)(
    "stores a user message the protocol accepts: $name",
    async ({ content }) => {
      expect(contentSchema.safeParse(content).success).toBe(true);
      const row = await asRole(sql, A, async (tx) => {
        const [m] = await tx`
        insert into chat_memory (session_id, message)
        values (${alice.chat}, ${tx.json({ role: "user", content })})
        returning seq::int as seq, message`;
        return m;
      });
      expect(row).toEqual({ seq: 3, message: { role: "user", content } });
    },
  );

  test.each(["has space", "slash/y", "é", "semi;colon"])(
    "refuses a client_id the protocol refuses: %j (42501)",
    async (clientId) => {
      expect(clientIdSchema.safeParse(clientId).success).toBe(false);
      expect(await failure(A, (tx) => addMessage(tx, alice.chat, "x", clientId))).toBe("42501");
    },
  );

  test("service_role may still store assistant and system messages", async () => {
    const roles = await asRole(sql, service, async (tx) => {
      const out: unknown[] = [];
      for (const role of ["assistant", "system"]) {
        const [m] = await tx`
          insert into chat_memory (session_id, message)
          values (${alice.chat}, ${tx.json({ role, content: "reply" })}) returning message->>'role' as role`;
        out.push(m?.role);
      }
      return out;
    });
    expect(roles).toEqual(["assistant", "system"]);
  });
});

describe("authenticated: search_sessions", () => {
  test("sees only own searches", async () => {
    const rows = await asRole(sql, A, (tx) => tx`select id from search_sessions`);
    expect(rows).toEqual([{ id: alice.search }]);
  });

  test("records an own search, bumping total_searches", async () => {
    const total = await asRole(sql, A, async (tx) => {
      await addSearch(tx, alice.id, "no_results");
      const [me] = await tx`select total_searches from users`;
      return me?.total_searches;
    });
    expect(total).toBe(2);
  });

  test("cannot record a search for another user", async () => {
    expect(await failure(A, (tx) => addSearch(tx, bob.id))).toBe("42501");
  });

  test("cannot update or delete searches", async () => {
    expect(
      await failure(
        A,
        (tx) => tx`update search_sessions set status = 'failed' where id = ${alice.search}`,
      ),
    ).toBe("42501");
    expect(
      await failure(A, (tx) => tx`delete from search_sessions where id = ${alice.search}`),
    ).toBe("42501");
  });
});

describe("authenticated: functions", () => {
  test("get_user_chat_history and get_user_stats return own rows only", async () => {
    const out = await asRole(sql, A, async (tx) => ({
      ownHistory: await tx`select session_id from get_user_chat_history(${alice.clerk})`,
      bobHistory: await tx`select session_id from get_user_chat_history(${bob.clerk})`,
      ownStats: await tx`select total_conversations, message_count, total_searches
                           from get_user_stats(${alice.clerk})`,
      bobStats: await tx`select * from get_user_stats(${bob.clerk})`,
    }));
    expect(out).toEqual({
      ownHistory: [{ session_id: alice.chat }],
      bobHistory: [],
      ownStats: [{ total_conversations: 1, message_count: 2, total_searches: 1 }],
      bobStats: [],
    });
  });

  test("cannot call the trigger functions directly", async () => {
    expect(await failure(A, (tx) => tx`select public.update_user_stats_on_session()`)).toBe(
      "42501",
    );
  });
});

describe("service_role", () => {
  test("sees every row of every table", async () => {
    const out = await asRole(sql, service, async (tx) => ({
      users: (await tx`select id from users`).length,
      chats: (await tx`select id from chat_sessions`).length,
      messages: (await tx`select id from chat_memory`).length,
      searches: (await tx`select id from search_sessions`).length,
    }));
    expect(out).toEqual({ users: 2, chats: 2, messages: 4, searches: 2 });
  });

  test("creates users, chats, messages and searches for anyone", async () => {
    const out = await asRole(sql, service, async (tx) => {
      const carol = await makeUser(tx, "user_2carolRLS");
      const chat = await makeChat(tx, carol.id);
      const m = await addMessage(tx, chat, "assistant reply");
      const inBob = await addMessage(tx, bob.chat, "reply to bob");
      await addSearch(tx, carol.id);
      const [stats] = await tx`
        select total_conversations, message_count, total_searches
          from get_user_stats(${carol.clerk_id})`;
      return { seq: m.seq, bobSeq: inBob.seq, stats };
    });
    expect(out).toEqual({
      seq: 1,
      bobSeq: 3,
      stats: { total_conversations: 1, message_count: 1, total_searches: 1 },
    });
  });

  test("updates counters, tier and token_usage (bigint)", async () => {
    const row = await asRole(sql, service, async (tx) => {
      const [r] = await tx`
        update users set token_usage = token_usage + 3000000000, subscription_tier = 'pro',
                         message_count = 0, total_conversations = 0, total_searches = 0
         where id = ${bob.id}
         returning token_usage::text as token_usage, subscription_tier, message_count`;
      return r;
    });
    expect(row).toEqual({ token_usage: "3000000000", subscription_tier: "pro", message_count: 0 });
  });

  test("updates and deletes messages, chats, searches and users", async () => {
    const out = await asRole(sql, service, async (tx) => ({
      updatedMsg: (
        await tx`update chat_memory set message = ${tx.json(msg("edited"))} where id = ${alice.messages[0] ?? ""}`
      ).count,
      deletedMsg: (await tx`delete from chat_memory where id = ${bob.messages[1] ?? ""}`).count,
      renamed: (await tx`update chat_sessions set title = 'by service' where id = ${bob.chat}`)
        .count,
      updatedSearch: (
        await tx`update search_sessions set status = 'failed' where id = ${bob.search}`
      ).count,
      deletedSearch: (await tx`delete from search_sessions where id = ${alice.search}`).count,
      deletedChat: (await tx`delete from chat_sessions where id = ${alice.chat}`).count,
      deletedUser: (await tx`delete from users where id = ${bob.id}`).count,
      usersLeft: (await tx`select id from users`).map((r) => r.id),
    }));
    expect(out).toEqual({
      updatedMsg: 1,
      deletedMsg: 1,
      renamed: 1,
      updatedSearch: 1,
      deletedSearch: 1,
      deletedChat: 1,
      deletedUser: 1,
      usersLeft: [alice.id],
    });
  });

  test("reads anyone's history and stats", async () => {
    const out = await asRole(sql, service, async (tx) => ({
      alice: await tx`select session_id from get_user_chat_history(${alice.clerk})`,
      bob: await tx`select message_count from get_user_stats(${bob.clerk})`,
    }));
    expect(out).toEqual({ alice: [{ session_id: alice.chat }], bob: [{ message_count: 2 }] });
  });
});

test("the fixture rows are untouched after the whole matrix", async () => {
  const [row] = await sql`
    select (select count(*)::int from users) as users,
           (select count(*)::int from chat_sessions) as chats,
           (select count(*)::int from chat_memory) as messages,
           (select count(*)::int from search_sessions) as searches`;
  expect(row).toEqual({ users: 2, chats: 2, messages: 4, searches: 2 });
  expect(await counters(sql, alice.id)).toMatchObject({
    total_conversations: 1,
    message_count: 2,
    total_searches: 1,
    token_usage: 0,
  });
});

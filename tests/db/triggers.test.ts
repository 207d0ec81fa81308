/**
 * The triggers, constraints and cascades of the migrations, including under concurrency.
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

/** users.updated_at in microseconds since the epoch. */
async function userUpdatedAt(id: string): Promise<number> {
  const [row] = await sql<{ us: number }[]>`
    select (extract(epoch from updated_at) * 1000000)::float8 as us from users where id = ${id}`;
  if (!row) throw new Error("no user");
  return row.us;
}

describe("timestamps", () => {
  test("users.updated_at follows every update, even one that tries to set it", async () => {
    const u = await makeUser(sql, "user_2tsusers");
    const t0 = await userUpdatedAt(u.id);
    await sql`update users set email = 'changed@example.com' where id = ${u.id}`;
    const t1 = await userUpdatedAt(u.id);
    expect(t1).toBeGreaterThan(t0);
    await sql`update users set updated_at = '2000-01-01T00:00:00Z' where id = ${u.id}`;
    const t2 = await userUpdatedAt(u.id);
    expect(t2).toBeGreaterThan(t1);
  });

  test("chat_sessions.updated_at follows a rename", async () => {
    const u = await makeUser(sql, "user_2tschats");
    const chat = await makeChat(sql, u.id, "before");
    const s0 = await chatState(sql, chat);
    await sql`update chat_sessions set title = 'after' where id = ${chat}`;
    const s1 = await chatState(sql, chat);
    expect(s1.title).toBe("after");
    expect(s1.updated_us).toBeGreaterThan(s0.updated_us);
  });
});

describe("counters", () => {
  test("a new chat bumps total_conversations and becomes last_session_id", async () => {
    const u = await makeUser(sql, "user_2cconv");
    const t0 = await userUpdatedAt(u.id);
    const c1 = await makeChat(sql, u.id);
    expect(await counters(sql, u.id)).toMatchObject({
      total_conversations: 1,
      last_session_id: c1,
    });
    const c2 = await makeChat(sql, u.id);
    expect(await counters(sql, u.id)).toMatchObject({
      total_conversations: 2,
      last_session_id: c2,
    });
    expect(await userUpdatedAt(u.id)).toBeGreaterThan(t0);
  });

  test("a new message bumps message_count, last_seq, last_message and updated_at", async () => {
    const u = await makeUser(sql, "user_2cmsg");
    const other = await makeUser(sql, "user_2cmsgother");
    const chat = await makeChat(sql, u.id);
    const s0 = await chatState(sql, chat);
    expect(s0).toMatchObject({ last_seq: 0, last_message: null });
    const m1 = await addMessage(sql, chat, "first");
    const s1 = await chatState(sql, chat);
    expect(m1.seq).toBe(1);
    expect(s1).toMatchObject({ last_seq: 1, last_message: { role: "user", content: "first" } });
    expect(s1.updated_us).toBeGreaterThan(s0.updated_us);
    await addMessage(sql, chat, "second");
    expect(await chatState(sql, chat)).toMatchObject({
      last_seq: 2,
      last_message: { role: "user", content: "second" },
    });
    expect((await counters(sql, u.id)).message_count).toBe(2);
    expect((await counters(sql, other.id)).message_count).toBe(0);
  });

  test("a recorded search bumps total_searches", async () => {
    const u = await makeUser(sql, "user_2csearch");
    await addSearch(sql, u.id);
    await addSearch(sql, u.id, "no_results");
    await asRole(sql, service, (tx) => addSearch(tx, u.id, "failed"), { commit: true });
    expect((await counters(sql, u.id)).total_searches).toBe(3);
  });
});

describe("seq", () => {
  test("seq is per chat and overwrites any value given", async () => {
    const u = await makeUser(sql, "user_2seq");
    const x = await makeChat(sql, u.id);
    const y = await makeChat(sql, u.id);
    expect((await addMessage(sql, x, "x1")).seq).toBe(1);
    expect((await addMessage(sql, y, "y1")).seq).toBe(1);
    const [forced] = await sql<{ seq: number }[]>`
      insert into chat_memory (session_id, message, seq)
      values (${x}, ${sql.json({ role: "user", content: "x2" })}, 999)
      returning seq::int as seq`;
    expect(forced?.seq).toBe(2);
    expect((await addMessage(sql, y, "y2")).seq).toBe(2);
    expect((await chatState(sql, x)).last_seq).toBe(2);
  });

  test("a message for a chat that does not exist fails on the foreign key", async () => {
    // The seq trigger says: "No such chat: leave seq alone and let the foreign key reject the row."
    const err = await pgError(
      sql`insert into chat_memory (session_id, message)
          values (gen_random_uuid(), ${sql.json({ role: "user", content: "lost" })})`,
    );
    expect({ code: err.code, constraint: err.constraint_name }).toEqual({
      code: "23503",
      constraint: "chat_memory_session_id_fkey",
    });
  });

  test("a rolled-back insert gives its number back", async () => {
    const u = await makeUser(sql, "user_2seqrollback");
    const chat = await makeChat(sql, u.id);
    await addMessage(sql, chat, "one");
    await pgError(
      sql.begin(async (tx) => {
        await addMessage(tx, chat, "two, rolled back");
        await tx`select 1/0`;
      }),
    );
    expect((await addMessage(sql, chat, "two")).seq).toBe(2);
  });
});

describe("client_id", () => {
  test("client_id defaults to a fresh value per message", async () => {
    const u = await makeUser(sql, "user_2cidefault");
    const chat = await makeChat(sql, u.id);
    const a = await addMessage(sql, chat, "a");
    const b = await addMessage(sql, chat, "b");
    expect(a.client_id).toMatch(/^[0-9a-f-]{36}$/);
    expect(b.client_id).not.toBe(a.client_id);
  });

  test("the same client_id in two different chats is fine", async () => {
    const u = await makeUser(sql, "user_2cidtwochats");
    const x = await makeChat(sql, u.id);
    const y = await makeChat(sql, u.id);
    const a = await addMessage(sql, x, "a", "client-1");
    const b = await addMessage(sql, y, "b", "client-1");
    expect([a.seq, b.seq]).toEqual([1, 1]);
  });

  test("a duplicate client_id in one chat fails with 23505 and changes nothing", async () => {
    const u = await makeUser(sql, "user_2ciddup");
    const chat = await makeChat(sql, u.id);
    await addMessage(sql, chat, "original", "client-dup");
    const before = await chatState(sql, chat);
    const countersBefore = await counters(sql, u.id);
    const err = await pgError(addMessage(sql, chat, "retry", "client-dup"));
    expect(err.code).toBe("23505");
    expect(err.constraint_name).toBe("chat_memory_session_client_id_key");
    const after = await chatState(sql, chat);
    expect(after.last_seq).toBe(1);
    expect(after.last_message).toEqual({ role: "user", content: "original" });
    expect(after.updated_us).toBe(before.updated_us);
    expect((await counters(sql, u.id)).message_count).toBe(countersBefore.message_count);
    const rows = await sql`select seq::int as seq from chat_memory where session_id = ${chat}`;
    expect(rows).toEqual([{ seq: 1 }]);
    expect((await addMessage(sql, chat, "next")).seq).toBe(2);
  });

  test("a retry with ON CONFLICT DO NOTHING stores nothing and leaves no gap in seq", async () => {
    const u = await makeUser(sql, "user_2cidconflict");
    const chat = await makeChat(sql, u.id);
    const first = await addMessage(sql, chat, "original", "client-retry");
    const before = await chatState(sql, chat);
    const retried = await sql`
      insert into chat_memory (session_id, message, client_id)
      values (${chat}, ${sql.json({ role: "user", content: "original" })}, 'client-retry')
      on conflict (session_id, client_id) do nothing
      returning id`;
    expect(retried).toHaveLength(0);
    const [stored] = await sql`
      select id, seq::int as seq from chat_memory
       where session_id = ${chat} and client_id = 'client-retry'`;
    expect(stored).toEqual({ id: first.id, seq: 1 });
    expect((await counters(sql, u.id)).message_count).toBe(1);
    // A skipped retry must leave the chat exactly as it was: the per-chat counter unmoved (so
    // the next message is number 2) and updated_at unchanged (the sidebar does not reorder).
    expect(await chatState(sql, chat)).toEqual(before);
    expect((await addMessage(sql, chat, "next")).seq).toBe(2);
  });

  test("client_id must be 1..128 characters", async () => {
    const u = await makeUser(sql, "user_2cidlength");
    const chat = await makeChat(sql, u.id);
    expect((await pgError(addMessage(sql, chat, "empty", ""))).code).toBe("23514");
    expect((await pgError(addMessage(sql, chat, "long", "x".repeat(129)))).code).toBe("23514");
    expect((await addMessage(sql, chat, "max", "x".repeat(128))).seq).toBe(1);
  });
});

describe("constraints", () => {
  test("search status must be completed, no_results or failed", async () => {
    const u = await makeUser(sql, "user_2status");
    const err = await pgError(addSearch(sql, u.id, "pending"));
    expect(err.code).toBe("23514");
    expect(err.constraint_name).toBe("search_sessions_status_check");
    for (const status of ["completed", "no_results", "failed"]) {
      await addSearch(sql, u.id, status);
    }
    expect((await counters(sql, u.id)).total_searches).toBe(3);
  });

  test("token_usage is bigint and cannot go negative", async () => {
    const u = await makeUser(sql, "user_2tokens");
    await sql`update users set token_usage = token_usage + 5000000000 where id = ${u.id}`;
    expect((await counters(sql, u.id)).token_usage).toBe(5_000_000_000);
    const err = await pgError(sql`update users set token_usage = -1 where id = ${u.id}`);
    expect(err.code).toBe("23514");
  });
});

describe("deletes", () => {
  test("deleting the user's last chat sets last_session_id to null; another chat does not", async () => {
    const u = await makeUser(sql, "user_2dellast");
    const older = await makeChat(sql, u.id);
    const latest = await makeChat(sql, u.id);
    await sql`delete from chat_sessions where id = ${older}`;
    expect((await counters(sql, u.id)).last_session_id).toBe(latest);
    await sql`delete from chat_sessions where id = ${latest}`;
    expect((await counters(sql, u.id)).last_session_id).toBeNull();
  });

  test("deleting the last chat as the authenticated user also nulls last_session_id", async () => {
    const u = await makeUser(sql, "user_2dellastrls");
    const chat = await makeChat(sql, u.id);
    await addMessage(sql, chat, "m");
    await asRole(sql, authed("user_2dellastrls"), (tx) => tx`delete from chat_sessions`, {
      commit: true,
    });
    expect((await counters(sql, u.id)).last_session_id).toBeNull();
  });

  test("deleting a user removes their chats, messages and searches, and no one else's", async () => {
    const u = await makeUser(sql, "user_2delcascade");
    const keep = await makeUser(sql, "user_2delkeep");
    for (const owner of [u.id, keep.id]) {
      const chat = await makeChat(sql, owner);
      await addMessage(sql, chat, "a");
      await addMessage(sql, chat, "b");
      await addSearch(sql, owner);
    }
    const count = async (id: string) => {
      const [row] = await sql`
        select (select count(*)::int from chat_sessions where user_id = ${id}) as chats,
               (select count(*)::int from chat_memory m join chat_sessions s on s.id = m.session_id
                 where s.user_id = ${id}) as messages,
               (select count(*)::int from search_sessions where user_id = ${id}) as searches`;
      return row;
    };
    const [orphans0] = await sql`select count(*)::int as n from chat_memory`;
    await sql`delete from users where id = ${u.id}`;
    expect(await count(u.id)).toEqual({ chats: 0, messages: 0, searches: 0 });
    expect(await count(keep.id)).toEqual({ chats: 1, messages: 2, searches: 1 });
    const [orphans1] = await sql`select count(*)::int as n from chat_memory`;
    expect(orphans1?.n).toBe((orphans0?.n ?? 0) - 2);
  });
});

describe("concurrency", () => {
  test("50 concurrent chats for one user count exactly 50", async () => {
    const u = await makeUser(sql, "user_2concchats");
    const pool = fdb.pool(10);
    const rows = await Promise.all(
      Array.from({ length: 50 }, async (_, i) => {
        const [row] = await pool<{ id: string; pid: number }[]>`
          insert into chat_sessions (user_id, title) values (${u.id}, ${`chat ${i}`})
          returning id, pg_backend_pid() as pid`;
        if (!row) throw new Error("chat not inserted");
        return row;
      }),
    );
    expect(new Set(rows.map((r) => r.pid)).size).toBeGreaterThan(1);
    const c = await counters(sql, u.id);
    expect(c.total_conversations).toBe(50);
    expect(rows.map((r) => r.id)).toContain(c.last_session_id);
    const [n] = await sql`select count(*)::int as n from chat_sessions where user_id = ${u.id}`;
    expect(n?.n).toBe(50);
  });

  test("3 writers x 100 concurrent messages into one chat: seq 1..300, no gaps", async () => {
    const clerkId = "user_2concmsgs";
    const u = await makeUser(sql, clerkId);
    const chat = await makeChat(sql, u.id);
    const owner = fdb.pool(10);
    const svc = fdb.pool(10);
    const usr = fdb.pool(10);
    const writes: Promise<unknown>[] = [];
    for (let i = 0; i < 100; i++) {
      writes.push(addMessage(owner, chat, `owner ${i}`));
      writes.push(
        asRole(svc, service, (tx) => addMessage(tx, chat, `service ${i}`), { commit: true }),
      );
      writes.push(
        asRole(usr, authed(clerkId), (tx) => addMessage(tx, chat, `user ${i}`), { commit: true }),
      );
    }
    await Promise.all(writes);

    const rows = await sql<{ seq: number; message: { content: string } }[]>`
      select seq::int as seq, message from chat_memory where session_id = ${chat} order by seq`;
    expect(rows.map((r) => r.seq)).toEqual(Array.from({ length: 300 }, (_, i) => i + 1));
    const contents = new Set(rows.map((r) => r.message.content));
    expect(contents.size).toBe(300);
    const state = await chatState(sql, chat);
    expect(state.last_seq).toBe(300);
    expect(state.last_message).toEqual(rows[299]?.message);
    expect((await counters(sql, u.id)).message_count).toBe(300);
  });
});

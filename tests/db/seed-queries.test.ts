/**
 * The seed's own statements keep working on the migrated schema: its four example queries
 * (section "7. Example Queries"), copied verbatim with only the placeholders bound to real ids,
 * and inserts written the seed's way, without the columns added since (seq, client_id, last_seq).
 */
import type postgres from "postgres";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { asRole } from "../helpers/db.js";
import { authed, chatState, counters, type FileDb, openFileDb, service } from "./fixtures.js";

let fdb: FileDb;
let sql: postgres.Sql;

// Section 7 of the seed, character for character.
const SEED_QUERY_1 =
  "SELECT id, title, created_at, updated_at FROM public.chat_sessions WHERE user_id = 'user-uuid-placeholder' ORDER BY created_at DESC;";
const SEED_QUERY_2 =
  "SELECT id, message, created_at FROM public.chat_memory WHERE session_id = 'session-uuid-placeholder' ORDER BY created_at ASC;";
const SEED_QUERY_3 =
  "SELECT s.id, s.title, s.created_at, s.updated_at FROM public.chat_sessions s JOIN public.users u ON s.id = u.last_session_id WHERE u.id = 'user-uuid-placeholder';";
const SEED_QUERY_4 =
  "SELECT id, email, total_conversations FROM public.users ORDER BY total_conversations DESC;";

/** Runs a seed query with its quoted placeholder bound as a parameter; the text is otherwise unchanged. */
function seedQuery(db: postgres.Sql | postgres.TransactionSql, text: string, id?: string) {
  const bound = text.replace(/'(user|session)-uuid-placeholder'/g, "$$1");
  expect(bound === text).toBe(id === undefined);
  return id === undefined ? db.unsafe(bound) : db.unsafe(bound, [id]);
}

interface World {
  heavy: { id: string; clerk: string; chats: string[] };
  light: { id: string; clerk: string; chat: string };
  idle: { id: string; clerk: string };
  messages: { id: string; message: { role: string; content: string } }[];
}
const w = {} as World;

beforeAll(async () => {
  fdb = await openFileDb();
  sql = fdb.sql;
  // Seed-style inserts: only the seed's columns, each statement its own transaction.
  const [heavy] = await sql`
    insert into users (email, clerk_id) values ('heavy@example.com', 'user_2seedheavy') returning id`;
  const [light] = await sql`
    insert into users (email, clerk_id) values ('light@example.com', 'user_2seedlight') returning id`;
  const [idle] = await sql`
    insert into users (email, clerk_id) values (null, 'user_2seedidle') returning id`;
  w.heavy = { id: heavy?.id, clerk: "user_2seedheavy", chats: [] };
  w.light = { id: light?.id, clerk: "user_2seedlight", chat: "" };
  w.idle = { id: idle?.id, clerk: "user_2seedidle" };
  for (const title of ["first", "second", "third"]) {
    const [c] = await sql`
      insert into chat_sessions (user_id, title) values (${w.heavy.id}, ${title}) returning id`;
    w.heavy.chats.push(c?.id);
  }
  const [lc] = await sql`insert into chat_sessions (user_id) values (${w.light.id}) returning id`;
  w.light.chat = lc?.id;
  w.messages = [];
  for (const [role, content] of [
    ["user", "hi"],
    ["assistant", "hello"],
    ["user", "bye"],
  ] as const) {
    const message = { role, content };
    const [m] = await sql`
      insert into chat_memory (session_id, message) values (${w.heavy.chats[0] ?? ""}, ${sql.json(message)})
      returning id`;
    w.messages.push({ id: m?.id, message });
  }
  await sql`
    insert into search_sessions (user_id, filters, results, results_count, status)
    values (${w.heavy.id}, ${sql.json({ q: "x" })}, ${sql.json([])}, 0, 'no_results')`;
});
afterAll(async () => {
  await fdb?.close();
});

describe("seed-style inserts", () => {
  test("users get the seed's defaults", async () => {
    const [row] = await sql`
      select total_conversations, total_searches, message_count, token_usage::int as token_usage,
             subscription_tier, subscription_status, last_seen_at is not null as seen,
             created_at is not null as created
        from users where id = ${w.idle.id}`;
    expect(row).toEqual({
      total_conversations: 0,
      total_searches: 0,
      message_count: 0,
      token_usage: 0,
      subscription_tier: "free",
      subscription_status: "active",
      seen: true,
      created: true,
    });
  });

  test("chats without a title are 'New Chat' and start at last_seq 0", async () => {
    const s = await chatState(sql, w.light.chat);
    expect(s).toMatchObject({ title: "New Chat", last_seq: 0, last_message: null });
  });

  test("messages without seq or client_id get both", async () => {
    const rows = await sql`
      select id, seq::int as seq, length(client_id) as client_len from chat_memory
       where session_id = ${w.heavy.chats[0] ?? ""} order by seq`;
    expect(rows).toEqual(w.messages.map((m, i) => ({ id: m.id, seq: i + 1, client_len: 36 })));
    expect(await chatState(sql, w.heavy.chats[0] ?? "")).toMatchObject({
      last_seq: 3,
      last_message: { role: "user", content: "bye" },
    });
  });

  test("the counters follow the seed-style inserts", async () => {
    expect(await counters(sql, w.heavy.id)).toMatchObject({
      total_conversations: 3,
      message_count: 3,
      total_searches: 1,
      last_session_id: w.heavy.chats[2],
    });
  });

  test("the same inserts work for the user under RLS, with a client-made id", async () => {
    const out = await asRole(sql, authed(w.light.clerk), async (tx) => {
      const id = "3f2a6b1e-9c1d-4e5f-8a7b-0c1d2e3f4a5b";
      await tx`insert into chat_sessions (id, user_id, title) values (${id}, ${w.light.id}, 'mine')`;
      await tx`
        insert into chat_memory (session_id, message)
        values (${id}, ${tx.json({ role: "user", content: "hey" })})`;
      await tx`
        insert into search_sessions (user_id, filters, results, results_count, status)
        values (${w.light.id}, ${tx.json({})}, ${tx.json([])}, 0, 'failed')`;
      const [chat] = await tx`select last_seq::int as last_seq from chat_sessions where id = ${id}`;
      return chat;
    });
    expect(out).toEqual({ last_seq: 1 });
  });
});

describe("seed example queries", () => {
  test("1. chat history for a user, newest first", async () => {
    const rows = await seedQuery(sql, SEED_QUERY_1, w.heavy.id);
    expect(rows.map((r) => r.title)).toEqual(["third", "second", "first"]);
    expect(rows.map((r) => r.id)).toEqual([...w.heavy.chats].reverse());
    expect(Object.keys(rows[0] ?? {})).toEqual(["id", "title", "created_at", "updated_at"]);
  });

  test("2. messages of a session, oldest first", async () => {
    const rows = await seedQuery(sql, SEED_QUERY_2, w.heavy.chats[0]);
    expect(rows.map((r) => ({ id: r.id, message: r.message }))).toEqual(w.messages);
    expect(Object.keys(rows[0] ?? {})).toEqual(["id", "message", "created_at"]);
  });

  test("3. the user's latest chat session", async () => {
    const rows = await seedQuery(sql, SEED_QUERY_3, w.heavy.id);
    expect(rows.map((r) => ({ id: r.id, title: r.title }))).toEqual([
      { id: w.heavy.chats[2], title: "third" },
    ]);
    expect(await seedQuery(sql, SEED_QUERY_3, w.idle.id)).toHaveLength(0);
  });

  test("4. top users by total conversations", async () => {
    const rows = await seedQuery(sql, SEED_QUERY_4);
    expect(rows.map((r) => ({ ...r }))).toEqual([
      { id: w.heavy.id, email: "heavy@example.com", total_conversations: 3 },
      { id: w.light.id, email: "light@example.com", total_conversations: 1 },
      { id: w.idle.id, email: null, total_conversations: 0 },
    ]);
  });

  test("the queries run under RLS too: service_role sees all, a user only their own", async () => {
    const svc = await asRole(sql, service, async (tx) => ({
      q1: (await seedQuery(tx, SEED_QUERY_1, w.heavy.id)).length,
      q2: (await seedQuery(tx, SEED_QUERY_2, w.heavy.chats[0])).length,
      q3: (await seedQuery(tx, SEED_QUERY_3, w.heavy.id)).length,
      q4: (await seedQuery(tx, SEED_QUERY_4)).length,
    }));
    expect(svc).toEqual({ q1: 3, q2: 3, q3: 1, q4: 3 });
    const own = await asRole(sql, authed(w.heavy.clerk), async (tx) => ({
      q1: (await seedQuery(tx, SEED_QUERY_1, w.heavy.id)).length,
      q2: (await seedQuery(tx, SEED_QUERY_2, w.heavy.chats[0])).length,
      q3: (await seedQuery(tx, SEED_QUERY_3, w.heavy.id)).length,
      q4: (await seedQuery(tx, SEED_QUERY_4)).map((r) => r.id),
    }));
    expect(own).toEqual({ q1: 3, q2: 3, q3: 1, q4: [w.heavy.id] });
    const other = await asRole(sql, authed(w.light.clerk), async (tx) => ({
      q1: (await seedQuery(tx, SEED_QUERY_1, w.heavy.id)).length,
      q2: (await seedQuery(tx, SEED_QUERY_2, w.heavy.chats[0])).length,
      q3: (await seedQuery(tx, SEED_QUERY_3, w.heavy.id)).length,
    }));
    expect(other).toEqual({ q1: 0, q2: 0, q3: 0 });
  });

  test("the seed's helper function calls work with the seed's signatures", async () => {
    const history = await sql`select * from get_user_chat_history('user_2seedheavy')`;
    expect(history.map((r) => r.title)).toEqual(["first", "third", "second"]);
    expect(Object.keys(history[0] ?? {})).toEqual([
      "session_id",
      "title",
      "last_message",
      "created_at",
      "updated_at",
    ]);
    expect(history[0]?.last_message).toEqual({ role: "user", content: "bye" });
    const [stats] = await sql`select * from get_user_stats('user_2seedheavy')`;
    expect(stats).toEqual({
      total_conversations: 3,
      total_searches: 1,
      message_count: 3,
      token_usage: "0",
      subscription_tier: "free",
      subscription_status: "active",
    });
  });
});

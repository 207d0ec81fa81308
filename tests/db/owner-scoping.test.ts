/**
 * Defense in depth without RLS on the server's path (docs/security.md): every user-scoped
 * repository query carries the owner's id in its WHERE clause, so a service that forgot its
 * ownership check still could neither read nor change another user's chat. These tests call
 * the repositories directly with the wrong owner, bypassing the services' checks on purpose.
 */
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { createDatabase, type DatabaseHandle } from "../../server/src/db/client.js";
import { ChatRepository } from "../../server/src/repositories/chat.repository.js";
import { MessageRepository } from "../../server/src/repositories/message.repository.js";
import { addMessage, type FileDb, makeChat, makeUser, openFileDb } from "./fixtures.js";

let fdb: FileDb;
let handle: DatabaseHandle;
let chats: ChatRepository;
let messages: MessageRepository;
let owner: string;
let intruder: string;
let chatId: string;

beforeAll(async () => {
  fdb = await openFileDb();
  handle = createDatabase(fdb.tdb.url, { max: 4 });
  chats = new ChatRepository(handle.db, handle.sql);
  messages = new MessageRepository(handle.sql);
  owner = (await makeUser(fdb.sql, "user_owner")).id;
  intruder = (await makeUser(fdb.sql, "user_intruder")).id;
  chatId = await makeChat(fdb.sql, owner, "Owner's secret chat");
  for (let i = 1; i <= 3; i++) await addMessage(fdb.sql, chatId, `secret ${i}`);
});
afterAll(async () => {
  await handle?.close();
  await fdb?.close();
});

async function chatState() {
  const [chat] = await fdb.sql<{ title: string; last_seq: number }[]>`
    select title, last_seq::int as last_seq from chat_sessions where id = ${chatId}`;
  const [{ n } = { n: 0 }] = await fdb.sql<{ n: number }[]>`
    select count(*)::int as n from chat_memory where session_id = ${chatId}`;
  return { chat, n };
}

describe("repositories scope every user query by owner", () => {
  test("the owner reads the chat and its messages", async () => {
    expect((await chats.find(owner, chatId))?.title).toBe("Owner's secret chat");
    const page = await messages.page(owner, chatId, 10);
    expect(page.rows.map((r) => r.seq)).toEqual([1, 2, 3]);
    expect(page.hasMore).toBe(false);
  });

  test("another user's id reads nothing: not the chat, not a page in any direction", async () => {
    expect(await chats.find(intruder, chatId)).toBeUndefined();
    expect((await chats.list(intruder, 50)).rows.map((c) => c.id)).not.toContain(chatId);
    for (const position of [{}, { after: 0 }, { before: 100 }]) {
      const page = await messages.page(intruder, chatId, 10, position);
      expect(page).toEqual({ rows: [], hasMore: false });
    }
  });

  test("another user's id changes nothing: no rename, no delete, no insert", async () => {
    const before = await chatState();
    expect(await chats.rename(intruder, chatId, "pwned")).toBeUndefined();
    expect(await chats.delete(intruder, chatId)).toBe(false);
    const stored = await messages.insertBatch(intruder, chatId, [
      { clientId: "intruder-1", message: { role: "user", content: "injected" } },
    ]);
    expect(stored).toBeUndefined();
    expect(await chatState()).toEqual(before);
    expect(before).toMatchObject({ chat: { title: "Owner's secret chat" } });
    expect(before.chat?.last_seq).toBe(before.n);
  });

  test("in a batch across chats, a group naming another user's chat gets nothing, and takes nothing", async () => {
    const mine = await makeChat(fdb.sql, intruder, "Intruder's own chat");
    const [existing] = await fdb.sql<{ client_id: string }[]>`
      select client_id from chat_memory where session_id = ${chatId} order by seq limit 1`;
    const before = await chatState();
    const [ownerPart, intruderPart, intruderOwn] = await messages.insertMany([
      {
        userId: owner,
        chatId,
        items: [{ clientId: "owner-4", message: { role: "user", content: "four" } }],
      },
      {
        userId: intruder,
        chatId,
        items: [
          // The owner's stored clientId: must not come back as a "duplicate" of the owner's row.
          { clientId: existing?.client_id ?? "", message: { role: "user", content: "secret 1" } },
          { clientId: "intruder-2", message: { role: "user", content: "injected" } },
        ],
      },
      {
        userId: intruder,
        chatId: mine,
        items: [{ clientId: "own-1", message: { role: "user", content: "hello" } }],
      },
    ]);
    expect(intruderPart).toBeUndefined();
    expect([...(ownerPart?.messages.values() ?? [])].map((m) => [m.row.seq, m.duplicate])).toEqual([
      [before.n + 1, false],
    ]);
    expect([...(intruderOwn?.messages.values() ?? [])].map((m) => m.row.seq)).toEqual([1]);
    const after = await chatState();
    expect(after.n).toBe(before.n + 1);
    const contents = await fdb.sql<{ content: string }[]>`
      select message->>'content' as content from chat_memory where session_id = ${chatId}`;
    expect(contents.map((c) => c.content)).not.toContain("injected");
  });
});

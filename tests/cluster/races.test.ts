/**
 * Races that used to leave every device wrong (issue #12, item 3), with two nodes over a private
 * redis-server (node B reaches it through a TCP proxy, so that its publishes can be held back)
 * and real SDK clients. Each race is forced deterministically: with a row lock the test holds in
 * Postgres, or by holding node B's bytes to Redis.
 */
import { randomBytes, randomUUID } from "node:crypto";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { type ChatClient, createChatClient } from "../../client-sdk/src/index.js";
import { isoFromMicros } from "../../server/src/db/time.js";
import { freePort, RedisProcess } from "../helpers/redis-process.js";
import { eventually, startTestServer, type TestServer, tokenFor } from "../helpers/server.js";
import { TcpProxy } from "../helpers/tcp-proxy.js";
import { until, untilState } from "../sdk/helpers.js";

const KEY = "races-service-key-0123456789abcdef0123456789";
const redis = new RedisProcess(await freePort());
let proxy: TcpProxy;
let nodeA: TestServer;
let nodeB: TestServer;
let sql: postgres.Sql;
const created: ChatClient[] = [];

function client(node: TestServer, userId: string): ChatClient {
  const c = createChatClient({ url: node.url, getToken: () => tokenFor(userId) });
  created.push(c);
  return c;
}

beforeAll(async () => {
  await redis.start();
  proxy = new TcpProxy(redis.port);
  await proxy.start();
  const prefix = `races-${randomBytes(4).toString("hex")}`;
  // Slow heartbeats: holding B's bytes for a moment must not make A give B up.
  const common = { redisKeyPrefix: prefix, serviceApiKey: KEY, clusterHeartbeatMs: 5000 };
  nodeA = await startTestServer({ ...common, redisUrl: redis.url });
  nodeB = await startTestServer({
    ...common,
    redisUrl: proxy.url,
    databaseUrl: nodeA.databaseUrl,
  });
  sql = postgres(nodeA.databaseUrl, { max: 3, onnotice: () => {} });
});

afterAll(async () => {
  await Promise.all(created.map((c) => c.close()));
  proxy?.release();
  await sql?.end();
  await nodeB?.close();
  await nodeA?.close();
  await proxy?.close();
  await redis.kill();
});

/** The user's sidebar as the database has it, in the server's order. */
async function storedSidebar(userId: string) {
  const rows = await sql<{ id: string; title: string; last_seq: string; updated_us: string }[]>`
    select c.id, c.title, c.last_seq,
           (extract(epoch from c.updated_at) * 1000000)::bigint::text as updated_us
      from chat_sessions c join users u on u.id = c.user_id
     where u.clerk_id = ${userId}
     order by c.updated_at desc, c.id desc`;
  return rows.map((r) => ({
    id: r.id,
    title: r.title,
    lastSeq: Number(r.last_seq),
    updatedAt: isoFromMicros(r.updated_us),
  }));
}

function shownSidebar(c: ChatClient) {
  return c.sidebar.getSnapshot().chats.map((e) => ({
    id: e.id,
    title: e.title,
    lastSeq: e.lastSeq,
    updatedAt: e.updatedAt,
  }));
}

/** Polls until some backend of this database is waiting for a lock on a statement like `pattern`. */
async function untilWaiting(pattern: string): Promise<void> {
  await eventually(async () => {
    const [row] = await sql<{ n: number }[]>`
      select count(*)::int as n from pg_stat_activity
       where datname = current_database() and wait_event_type = 'Lock' and query ilike ${pattern}`;
    expect(row?.n).toBeGreaterThan(0);
  }, 10_000);
}

describe("races between nodes", () => {
  test("a rename that commits while a message waits for the chat: every device ends with the new title", async () => {
    const userId = `user_race_rename_${randomBytes(3).toString("hex")}`;
    const a = client(nodeA, userId);
    const b = client(nodeB, userId);
    await Promise.all([untilState(a, "online"), untilState(b, "online")]);
    const { chat } = await a.createChat({ title: "Old title" });
    await until(b.sidebar, (s) => s.chats.length === 1, 5000, "B's sidebar");

    let renaming: Promise<unknown> | undefined;
    let sending: Promise<unknown> | undefined;
    await sql.begin(async (tx) => {
      // Hold the chat's row lock: the rename waits for it first, then the message's trigger,
      // whose statement has already read the chat (title included) in its snapshot.
      await tx`select 1 from chat_sessions where id = ${chat.id} for update`;
      renaming = a.renameChat({ chatId: chat.id, title: "New title" });
      await untilWaiting('update "chat_sessions"%');
      sending = b.sendMessage({ chatId: chat.id, content: "sent while renaming" });
      await untilWaiting("%public.store_messages(%");
    });
    await Promise.all([renaming, sending]);

    const [row] = await storedSidebar(userId);
    expect(row).toMatchObject({ title: "New title", lastSeq: 1 });
    for (const device of [a, b]) {
      await eventually(async () =>
        expect(shownSidebar(device)).toEqual(await storedSidebar(userId)),
      );
    }
  });

  test("chats written by one batch (the same updatedAt) are ordered by id, as the server does", async () => {
    const userId = `user_race_tie_${randomBytes(3).toString("hex")}`;
    const writer = client(nodeA, userId);
    await untilState(writer, "online");
    const first = (await writer.createChat({ title: "Locked" })).chat;
    const [lo, hi] = [
      (await writer.createChat({ title: "One" })).chat.id,
      (await writer.createChat({ title: "Two" })).chat.id,
    ].sort();
    if (!lo || !hi) throw new Error("two chats expected");
    // The lower id is the more recent one, so the listing below ranks it first.
    await writer.sendMessage({ chatId: hi, content: "older" });
    await writer.sendMessage({ chatId: lo, content: "newer" });
    const reader = client(nodeB, userId);
    await until(reader.sidebar, (s) => s.chats.length === 3, 5000, "reader's sidebar");
    expect(reader.sidebar.getSnapshot().chats.map((c) => c.id)).toEqual([lo, hi, first.id]);

    // One batch for both: node A's batch for the user waits on a lock; the next two sends queue
    // up behind it and go together, in one statement (one now()).
    // One device per send: a socket's commands are served in order.
    const service = nodeA.app.services.messages as unknown as { queue: unknown[] };
    const devices = await Promise.all([0, 1, 2].map(() => nodeA.connectAs(userId)));
    const send = (i: number, chatId: string, content: string): Promise<void> =>
      (devices[i] as (typeof devices)[number])
        .timeout(10_000)
        .emitWithAck("message:send", { chatId, clientId: randomUUID(), content })
        .then((ack) => {
          if (!ack.ok) throw new Error(ack.error.message);
        });
    let sends: Promise<unknown>[] = [];
    await sql.begin(async (tx) => {
      await tx`select 1 from chat_sessions where id = ${first.id} for update`;
      sends.push(send(0, first.id, "held"));
      await untilWaiting("%public.store_messages(%");
      sends = [...sends, send(1, lo, "together"), send(2, hi, "together")];
      await eventually(() => expect(service.queue.length).toBe(2), 10_000);
    });
    await Promise.all(sends);
    const stored = await storedSidebar(userId);
    const tied = stored.filter((c) => c.id === lo || c.id === hi);
    expect(tied[0]?.updatedAt).toBe(tied[1]?.updatedAt);
    expect(stored.map((c) => c.id)).toEqual([hi, lo, first.id]);

    const listed = (await writer.listChats()).chats.map((c) => c.id);
    expect(listed).toEqual([hi, lo, first.id]);
    for (const device of [reader, writer]) {
      await eventually(async () =>
        expect(shownSidebar(device)).toEqual(await storedSidebar(userId)),
      );
    }
  });

  test("a delete racing a send on another node: the deleted chat stays deleted", async () => {
    const userId = `user_race_delete_${randomBytes(3).toString("hex")}`;
    const deleter = client(nodeA, userId);
    await untilState(deleter, "online");
    const { chat } = await deleter.createChat({ title: "Doomed" });
    const witness = await nodeB.connectAs(userId);

    // Node B stores a message just before the delete; its events are held on the way to Redis.
    proxy.hold();
    const posted = await fetch(
      `${nodeB.url}/service/v1/users/${userId}/chats/${chat.id}/messages`,
      {
        method: "POST",
        headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
        body: JSON.stringify({ clientId: randomUUID(), content: "stored just before" }),
        signal: AbortSignal.timeout(10_000),
      },
    );
    expect(posted.status).toBe(201);
    await deleter.deleteChat({ chatId: chat.id });
    expect(deleter.sidebar.getSnapshot().chats.map((c) => c.id)).not.toContain(chat.id);
    proxy.release();

    // Node B's events reach node A in order: once a chat created on B after the release shows
    // on the deleting device, B's late chat:updated for the deleted chat has been through too.
    const marker = await witness.timeout(10_000).emitWithAck("chat:create", { title: "Marker" });
    if (!marker.ok) throw new Error(marker.error.message);
    await until(
      deleter.sidebar,
      (s) => s.chats.some((c) => c.id === marker.data.chat.id),
      10_000,
      "the marker chat on the deleting device",
    );
    expect(deleter.sidebar.getSnapshot().chats.map((c) => c.id)).toEqual([marker.data.chat.id]);
    expect(shownSidebar(deleter)).toEqual(await storedSidebar(userId));
    witness.disconnect();
  });
});

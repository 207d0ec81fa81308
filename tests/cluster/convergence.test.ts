/**
 * Devices that stay connected converge after a window in which events between nodes were lost
 * (issue #12, item 2). Two nodes over a private redis-server that this test spawns; node A
 * reaches it through a TCP proxy, so that A alone can be cut off. Real SDK clients. Each test
 * changes things on node A while the events cannot reach node B, and then checks that B's
 * device (sidebar and open chat) equals the database by itself: no reconnect, the same socket,
 * its connection state never leaving `online`.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { type ChatClient, createChatClient } from "../../client-sdk/src/index.js";
import { isoFromMicros } from "../../server/src/db/time.js";
import { freePort, RedisProcess } from "../helpers/redis-process.js";
import { eventually, startTestServer, type TestServer, tokenFor } from "../helpers/server.js";
import { TcpProxy } from "../helpers/tcp-proxy.js";
import { until, untilState } from "../sdk/helpers.js";

const CONVERGE_MS = 20_000;
/**
 * Runs of a statement before its answer is lost: postgres.js hands queries to its idle
 * connections in turn, and a statement's first run on a connection waits for Postgres to
 * describe it, which would be held back too. More than the pool's 10 connections.
 */
const WARM_UPS = 12;

const redis = new RedisProcess(await freePort());
let proxy: TcpProxy;
let nodeA: TestServer;
let nodeB: TestServer;
const created: ChatClient[] = [];
let redisUp = false;
let prefix = "";

function client(node: TestServer, userId: string): ChatClient {
  const c = createChatClient({ url: node.url, getToken: () => tokenFor(userId) });
  created.push(c);
  return c;
}

beforeAll(async () => {
  await redis.start();
  redisUp = true;
  proxy = new TcpProxy(redis.port);
  await proxy.start();
  prefix = `conv-${randomBytes(4).toString("hex")}`;
  // A beats fast; B notices a silent peer only after 4 of its own (slower) beats, so that A's
  // changes in the cut-off test are made before B gives A up.
  nodeA = await startTestServer({
    redisUrl: proxy.url,
    redisKeyPrefix: prefix,
    clusterHeartbeatMs: 200,
  });
  nodeB = await startTestServer({
    redisUrl: redis.url,
    redisKeyPrefix: prefix,
    databaseUrl: nodeA.databaseUrl,
    clusterHeartbeatMs: 1500,
  });
});

afterAll(async () => {
  await Promise.all(created.map((c) => c.close()));
  proxy?.restore();
  if (!redisUp) await redis.start().catch(() => {});
  await nodeB?.close();
  await nodeA?.close();
  await proxy?.close();
  await redis.kill();
});

/** The user's sidebar and one chat's messages as the database has them. */
async function database(userId: string, chatId: string) {
  const sql = nodeB.database.sql;
  const chats = await sql<
    { id: string; title: string; last_seq: string; content: string | null; updated_us: string }[]
  >`
    select c.id, c.title, c.last_seq, c.last_message->>'content' as content,
           (extract(epoch from c.updated_at) * 1000000)::bigint::text as updated_us
      from chat_sessions c join users u on u.id = c.user_id
     where u.clerk_id = ${userId}
     order by c.updated_at desc, c.id desc`;
  const messages = await sql<{ seq: string; client_id: string; content: string }[]>`
    select seq, client_id, message->>'content' as content
      from chat_memory where session_id = ${chatId} order by seq`;
  return {
    sidebar: chats.map((c) => ({
      id: c.id,
      title: c.title,
      lastSeq: Number(c.last_seq),
      content: c.content,
      updatedAt: isoFromMicros(c.updated_us),
    })),
    messages: messages.map((m) => ({
      seq: Number(m.seq),
      clientId: m.client_id,
      content: m.content,
    })),
  };
}

/** What the device shows: its sidebar, and the open chat's items. */
function shown(c: ChatClient, chatId: string) {
  return {
    sidebar: c.sidebar.getSnapshot().chats.map((e) => ({
      id: e.id,
      title: e.title,
      lastSeq: e.lastSeq,
      content: e.lastMessage?.content ?? null,
      updatedAt: e.updatedAt,
    })),
    messages: c
      .chat(chatId)
      .getSnapshot()
      .items.map((i) => ({ seq: i.seq, clientId: i.clientId, content: i.content })),
  };
}

async function expectConverged(c: ChatClient, userId: string, chatId: string): Promise<void> {
  await eventually(async () => {
    expect(shown(c, chatId)).toEqual(await database(userId, chatId));
  }, CONVERGE_MS);
}

/** The ids of the user's sockets on one node (this node's own view, no Redis needed). */
function socketIds(node: TestServer, userId: string): string[] {
  return [...node.app.io.of("/").sockets.values()]
    .filter((s) => s.data.userId === userId)
    .map((s) => s.id)
    .sort();
}

/** A device on each node with three chats, one of them open on B's device. */
async function setUp(label: string) {
  const userId = `user_conv_${label}_${randomBytes(3).toString("hex")}`;
  const a = client(nodeA, userId);
  const b = client(nodeB, userId);
  await Promise.all([untilState(a, "online"), untilState(b, "online")]);
  const open = (await a.createChat({ title: "Open on B" })).chat;
  const doomed = (await a.createChat({ title: "Deleted on A" })).chat;
  const renamed = (await a.createChat({ title: "Renamed on A" })).chat;
  await a.sendMessage({ chatId: open.id, content: "before" });
  await b.openChat({ chatId: open.id });
  await a.openChat({ chatId: open.id });
  await until(b.sidebar, (s) => s.chats.length === 3, 5000, "B's sidebar with three chats");
  await until(b.chat(open.id), (s) => s.messages.length === 1, 5000, "B's chat loaded");
  const states: string[] = [];
  b.on("state", (state) => states.push(state));
  const sockets = socketIds(nodeB, userId);
  expect(sockets).toHaveLength(1);
  return { userId, a, b, open, doomed, renamed, states, sockets };
}

/** Changes on A that B's device must end up showing. */
async function changeOnA(
  a: ChatClient,
  chats: { open: string; doomed: string; renamed: string },
  label: string,
) {
  for (let i = 0; i < 3; i++) await a.sendMessage({ chatId: chats.open, content: `${label} ${i}` });
  await a.renameChat({ chatId: chats.renamed, title: `Renamed ${label}` });
  await a.deleteChat({ chatId: chats.doomed });
  const fresh = (await a.createChat({ title: `New ${label}` })).chat;
  await a.sendMessage({ chatId: fresh.id, content: `in the new chat ${label}` });
}

/**
 * Runs `body` with a third node, C, that reaches Postgres through a proxy able to swallow the
 * database's answers, and a user's device on node B that must converge by itself.
 */
async function withLostAnswers(
  label: string,
  body: (s: {
    nodeC: TestServer;
    pgProxy: TcpProxy;
    userId: string;
    b: ChatClient;
    states: string[];
  }) => Promise<void>,
): Promise<void> {
  const userId = `user_conv_${label}_${randomBytes(4).toString("hex")}`;
  const dbUrl = new URL(nodeA.databaseUrl);
  const pgProxy = new TcpProxy(Number(dbUrl.port || 5432), dbUrl.hostname);
  await pgProxy.start();
  dbUrl.port = String(pgProxy.port);
  const nodeC = await startTestServer({
    redisUrl: redis.url,
    redisKeyPrefix: prefix,
    databaseUrl: dbUrl.toString(),
    clusterHeartbeatMs: 200,
  });
  try {
    const b = client(nodeB, userId);
    await untilState(b, "online");
    const states: string[] = [];
    b.on("state", (state) => states.push(state));
    await body({ nodeC, pgProxy, userId, b, states });
  } finally {
    await nodeC.close();
    await pgProxy.close();
  }
}

/**
 * Lets `command` commit in the database while node C never hears back: its answer is held
 * until `committed` finds a row, then the connection breaks with the answer in it.
 */
async function loseTheAnswer(
  pgProxy: TcpProxy,
  command: () => Promise<{ ok: boolean }>,
  committed: () => PromiseLike<readonly unknown[]>,
): Promise<void> {
  pgProxy.holdReplies();
  const answer = command();
  await eventually(async () => expect(await committed()).toHaveLength(1), 10_000);
  pgProxy.cut();
  expect((await answer).ok).toBe(false);
  pgProxy.restore();
}

describe("a device that stays connected converges", () => {
  test("a node that shuts down gracefully says goodbye: the others do not resync for it", async () => {
    const userId = `user_conv_bye_${randomBytes(3).toString("hex")}`;
    const b = client(nodeB, userId);
    await untilState(b, "online");
    const resyncs: string[] = [];
    b.on("connection:resync", (e) => resyncs.push(e.reason));
    const nodeC = await startTestServer({
      redisUrl: redis.url,
      redisKeyPrefix: prefix,
      databaseUrl: nodeA.databaseUrl,
      clusterHeartbeatMs: 200,
    });
    // B knows C once C's heartbeats arrive; a socket on C is seen from B through Redis.
    const probe = await nodeC.connectAs(userId);
    await eventually(async () => {
      expect(await nodeB.app.io.in(`user:${userId}`).fetchSockets()).toHaveLength(2);
    });
    await new Promise((r) => setTimeout(r, 600)); // a few of C's beats reach B
    probe.disconnect();
    await nodeC.close();
    // Longer than B's patience with a silent peer (4 beats of 1.5 s): C said goodbye.
    await new Promise((r) => setTimeout(r, 7000));
    expect(resyncs).toEqual([]);
    expect(b.state).toBe("online");
  });

  test("a send whose commit succeeded but whose answer was lost: the other devices still see it", async () => {
    await withLostAnswers("lost", async ({ nodeC, pgProxy, userId, b, states }) => {
      const { chat } = await b.createChat({ title: "Lost answer" });
      await b.openChat({ chatId: chat.id });
      const sender = await nodeC.connectAs(userId);
      for (let i = 0; i < WARM_UPS; i++) {
        const warm = await sender
          .timeout(10_000)
          .emitWithAck("message:send", { chatId: chat.id, clientId: `warm-${i}`, content: "warm" });
        expect(warm.ok).toBe(true);
      }
      await until(
        b.chat(chat.id),
        (snap) => snap.messages.length === WARM_UPS,
        5000,
        "the warm-up",
      );
      const clientId = `lost-${randomBytes(4).toString("hex")}`;
      await loseTheAnswer(
        pgProxy,
        () =>
          sender.timeout(10_000).emitWithAck("message:send", {
            chatId: chat.id,
            clientId,
            content: "committed",
          }),
        () => nodeB.database.sql`
          select 1 from chat_memory where session_id = ${chat.id} and client_id = ${clientId}`,
      );

      // B's device learns of the message although node C never broadcast it.
      await until(
        b.chat(chat.id),
        (snap) => snap.messages.some((m) => m.clientId === clientId),
        CONVERGE_MS,
        "the committed message on B's device",
      );
      await expectConverged(b, userId, chat.id);
      expect(states).toEqual([]);
      sender.disconnect();
    });
  });

  test.each(["chat:create", "chat:delete"] as const)(
    "a %s committed with its answer lost: the other devices still see it",
    async (command) => {
      await withLostAnswers("lostchat", async ({ nodeC, pgProxy, userId, b, states }) => {
        const sender = await nodeC.connectAs(userId);
        const create = (id: string) =>
          sender
            .timeout(10_000)
            .emitWithAck("chat:create", { id, title: `Chat ${id.slice(0, 8)}` });
        const remove = (chatId: string) =>
          sender.timeout(10_000).emitWithAck("chat:delete", { chatId });
        // At once, so that every connection of node C's pool prepares both (each statement's
        // first run on a connection waits for Postgres to describe it).
        const warm = Array.from({ length: WARM_UPS }, () => randomUUID());
        for (const answer of await Promise.all(warm.map(create))) expect(answer.ok).toBe(true);
        for (const answer of await Promise.all(warm.map(remove))) expect(answer.ok).toBe(true);
        const id = randomUUID();
        const row = () => nodeB.database.sql`select 1 from chat_sessions where id = ${id}`;
        if (command === "chat:create") {
          await loseTheAnswer(pgProxy, () => create(id), row);
        } else {
          expect((await create(id)).ok).toBe(true);
          await until(b.sidebar, (snap) => snap.chats.some((c) => c.id === id), 5000, "the chat");
          await loseTheAnswer(
            pgProxy,
            () => remove(id),
            async () => {
              const rows = await row();
              return rows.length === 0 ? [{}] : [];
            },
          );
        }
        // B's device shows the change although node C never broadcast it.
        const present = command === "chat:create";
        await until(
          b.sidebar,
          (snap) => snap.chats.some((c) => c.id === id) === present,
          CONVERGE_MS,
          `B's sidebar after the ${command}`,
        );
        await expectConverged(b, userId, id);
        expect(states).toEqual([]);
        sender.disconnect();
      });
    },
  );

  test("after Redis is killed and comes back (changes during the outage and right after)", async () => {
    const s = await setUp("redis");
    await redis.kill();
    redisUp = false;
    await changeOnA(s.a, { open: s.open.id, doomed: s.doomed.id, renamed: s.renamed.id }, "down");
    await redis.start();
    redisUp = true;
    // Right after Redis is back, before ioredis has reconnected: still lost on the way.
    await s.a.sendMessage({ chatId: s.open.id, content: "just after" });

    await expectConverged(s.b, s.userId, s.open.id);
    await expectConverged(s.a, s.userId, s.open.id);
    const shownOnB = shown(s.b, s.open.id);
    expect(shownOnB.sidebar.map((c) => c.id)).not.toContain(s.doomed.id);
    expect(shownOnB.messages.map((m) => m.content)).toContain("just after");
    // No reconnect: the same socket, never out of `online`.
    expect(socketIds(nodeB, s.userId)).toEqual(s.sockets);
    expect(s.states).toEqual([]);
    expect(s.b.state).toBe("online");
  });

  test("when one node is cut off from Redis: while it stays away, and after it returns", async () => {
    const s = await setUp("cut");
    const resyncs: string[] = [];
    // B's own link is never cut here: a CLUSTER_RECONNECTED it gets is the second resync of the
    // earlier test's Redis restart (cluster-monitor.ts), not this test's.
    s.b.on("connection:resync", (e) => {
      if (e.reason !== "CLUSTER_RECONNECTED") resyncs.push(e.reason);
    });
    proxy.cut();
    await changeOnA(s.a, { open: s.open.id, doomed: s.doomed.id, renamed: s.renamed.id }, "cut");
    // The changes were made before B gave A up (B waits 4 of its 1.5 s beats).
    expect(resyncs).toEqual([]);
    // A never comes back in this part: B gives it up (its heartbeats stopped) and resyncs.
    await eventually(() => expect(resyncs).toContain("PEER_LOST"), 20_000);
    await expectConverged(s.b, s.userId, s.open.id);

    // More changes while A is still away, then A returns: its heartbeats show the gap.
    await s.a.sendMessage({ chatId: s.open.id, content: "still cut off" });
    await s.a.renameChat({ chatId: s.open.id, title: "Renamed while cut off" });
    proxy.restore();
    await expectConverged(s.b, s.userId, s.open.id);
    await expectConverged(s.a, s.userId, s.open.id);
    expect(shown(s.b, s.open.id).messages.map((m) => m.content)).toContain("still cut off");
    expect(socketIds(nodeB, s.userId)).toEqual(s.sockets);
    expect(s.states).toEqual([]);
  });
});

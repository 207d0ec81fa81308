/**
 * The outbox across nodes and faults: several nodes deliver one database's events (each event by
 * one node at a time, per chat in order), a node SIGKILLed mid-delivery has its chats taken over
 * within seconds, and events pending while Postgres is unreachable are delivered once it is back.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../helpers/db.js";
import {
  eventually,
  startTestServer,
  type TestServer,
  testWebhookDefaults,
} from "../helpers/server.js";
import { ok, openSql, userId } from "../realtime/support.js";
import {
  type Delivery,
  newSecret,
  PgProxy,
  pause,
  type Receiver,
  startReceiver,
} from "./support.js";

const chatOf = (d: Delivery) => String(d.data.chatId);
const seqOf = (d: Delivery) => Number((d.data.message as { seq?: number } | undefined)?.seq);

/** First successful delivery of each event id, per chat, in arrival order. */
function firstDeliveriesByChat(receiver: Receiver): Map<string, Delivery[]> {
  const seen = new Set<string>();
  const byChat = new Map<string, Delivery[]>();
  for (const d of receiver.delivered) {
    if (seen.has(d.id)) continue;
    seen.add(d.id);
    const list = byChat.get(chatOf(d)) ?? [];
    list.push(d);
    byChat.set(chatOf(d), list);
  }
  return byChat;
}

describe("outbox delivery across nodes and faults", () => {
  const cleanups: (() => Promise<unknown>)[] = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
  });
  afterAll(async () => {
    for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
  });

  it("two nodes deliver everything, per chat in order, no event by two nodes at once", async () => {
    const secret = newSecret();
    const receiver = await startReceiver(secret);
    cleanups.push(() => receiver.close());
    // Slow-ish and sometimes failing answers, so that deliveries overlap and retries happen.
    let n = 0;
    receiver.answer = async () => {
      await pause(Math.floor(Math.random() * 15));
      return ++n % 7 === 0 ? 500 : 200;
    };
    const webhook = { url: receiver.url, secret };
    const a = await startTestServer({ appWebhooks: webhook });
    cleanups.push(() => a.close());
    const b = await startTestServer({ databaseUrl: a.databaseUrl, appWebhooks: webhook });
    cleanups.push(() => b.close());

    const CHATS = 12;
    const PER_CHAT = 10;
    const chats: string[] = [];
    const nodes: TestServer[] = [a, b];
    const sockets = await Promise.all(nodes.map((node) => node.connectAs(userId("multi"))));
    for (let i = 0; i < CHATS; i++) {
      const s = sockets[i % 2];
      if (!s) throw new Error("no socket");
      chats.push((await ok(s, "chat:create", { title: `chat ${i}` })).chat.id);
    }
    await Promise.all(
      chats.map(async (chatId, i) => {
        const s = sockets[i % 2];
        if (!s) throw new Error("no socket");
        for (let m = 0; m < PER_CHAT; m++) {
          await ok(s, "message:send", { chatId, clientId: `c${m}`, content: `m${m}` });
        }
      }),
    );
    await eventually(() => {
      const byChat = firstDeliveriesByChat(receiver);
      for (const chatId of chats) expect(byChat.get(chatId)?.length).toBe(PER_CHAT);
    }, 60_000);
    expect(receiver.maxConcurrentPerChat).toBe(1);
    const byChat = firstDeliveriesByChat(receiver);
    for (const chatId of chats) {
      const seqs = byChat.get(chatId)?.map(seqOf) ?? [];
      if (seqs.some((x, i) => x !== i + 1)) {
        const t0 = receiver.attempts[0]?.at ?? 0;
        console.log(
          receiver.attempts
            .filter((x) => chatOf(x) === chatId)
            .map(
              (x) =>
                `${x.at - t0} seq=${seqOf(x)} attempt=${x.attempt} ok=${receiver.delivered.includes(x)}`,
            )
            .join("\n"),
        );
      }
      expect(byChat.get(chatId)?.map(seqOf)).toEqual(
        Array.from({ length: PER_CHAT }, (_, i) => i + 1),
      );
    }
    expect(receiver.maxConcurrentPerId).toBe(1);
    expect(receiver.badSignatures).toBe(0);
    // Both nodes delivered.
    for (const node of nodes) {
      const text = await node.app.metrics.registry.getSingleMetricAsString(
        "chat_webhook_delivered_total",
      );
      expect(text).toMatch(/chat_webhook_delivered_total\{type="message.created"\} [1-9]/);
    }
  });

  it("a node SIGKILLed mid-delivery: another node delivers its event within seconds", async () => {
    const secret = newSecret();
    const receiver = await startReceiver(secret);
    cleanups.push(() => receiver.close());
    receiver.answer = () => "hang";
    const tdb: TestDatabase = await createTestDatabase();
    cleanups.push(() => tdb.drop());
    // The child's leases last APP_WEBHOOK_NODE_TIMEOUT_MS (3 s); its attempt would hang 2.5 s.
    const webhook = { ...testWebhookDefaults, url: receiver.url, secret, timeoutMs: 2500 };

    const child: ChildProcess = spawn(
      process.execPath,
      ["--import", "tsx", "tests/outbox/delivery-node.ts"],
      {
        env: {
          ...process.env,
          DATABASE_URL: tdb.url,
          WEBHOOK_CONFIG: JSON.stringify(webhook),
        },
        stdio: ["ignore", "pipe", "inherit"],
      },
    );
    cleanups.push(async () => child.kill("SIGKILL"));
    await new Promise<void>((resolve, reject) => {
      child.stdout?.on("data", (b: Buffer) => b.toString().includes("ready") && resolve());
      child.once("exit", (code) => reject(new Error(`delivery node exited (${code})`)));
    });

    // Any writer: a message stored straight in SQL gets its event too.
    const sql = openSql(tdb.url);
    cleanups.push(() => sql.end());
    const clerkId = userId("kill");
    const [user] = await sql<{ id: string }[]>`
      insert into users (clerk_id) values (${clerkId}) returning id`;
    const [chat] = await sql<{ id: string }[]>`
      insert into chat_sessions (user_id, title) values (${user?.id ?? ""}, 'killed') returning id`;
    const chatId = chat?.id ?? "";
    await sql`insert into chat_memory (session_id, message, client_id)
              values (${chatId}, ${sql.json({ role: "user", content: "one" })}, 'one'),
                     (${chatId}, ${sql.json({ role: "user", content: "two" })}, 'two')`;

    // The child has the chat's job and is mid-delivery (the receiver holds the request).
    await eventually(() => expect(receiver.attempts.length).toBe(1), 15_000);
    child.kill("SIGKILL");
    await once(child, "exit");
    const killedAt = Date.now();
    receiver.answer = () => 204;

    const node = await startTestServer({
      databaseUrl: tdb.url,
      appWebhooks: { ...webhook, timeoutMs: 2000 },
    });
    cleanups.push(() => node.close());
    await eventually(
      () => expect(firstDeliveriesByChat(receiver).get(chatId)?.length).toBe(2),
      20_000,
    );
    const delivered = firstDeliveriesByChat(receiver).get(chatId) ?? [];
    expect(delivered.map(seqOf)).toEqual([1, 2]);
    // Taken over once the dead node's lease lapsed (APP_WEBHOOK_NODE_TIMEOUT_MS, 3 s here), not
    // after a job queue's 4 hours; bounded generously for a busy machine.
    expect((delivered[0]?.at ?? 0) - killedAt).toBeLessThan(12_000);
    // The dead node's attempt and the takeover's share the webhook-id (receivers de-duplicate).
    expect(receiver.attempts[0]?.id).toBe(delivered[0]?.id);
    expect(receiver.maxConcurrentPerId).toBe(1);
  });

  it("events pending while Postgres is unreachable are delivered once it is back", async () => {
    const secret = newSecret();
    const receiver = await startReceiver(secret);
    cleanups.push(() => receiver.close());
    receiver.answer = () => 503;
    const tdb = await createTestDatabase();
    cleanups.push(() => tdb.drop());
    const proxy = new PgProxy("127.0.0.1", Number(new URL(tdb.url).port || 5432));
    await proxy.listen();
    cleanups.push(() => proxy.close());
    const node = await startTestServer({
      databaseUrl: proxy.via(tdb.url),
      appWebhooks: { url: receiver.url, secret },
    });
    cleanups.push(() => node.close());

    const s = await node.connectAs(userId("pgdown"));
    const { chat } = await ok(s, "chat:create", { title: "pg down" });
    for (let i = 1; i <= 5; i++) {
      await ok(s, "message:send", { chatId: chat.id, clientId: `p${i}`, content: `p${i}` });
    }
    await eventually(() => expect(receiver.attempts.length).toBeGreaterThan(0), 10_000);

    proxy.cut();
    receiver.answer = () => 204;
    // The outage lasts a few seconds (longer than the backoff cap and the heartbeat interval).
    await pause(4000);
    proxy.restore();
    const restoredAt = Date.now();

    await eventually(
      () => expect(firstDeliveriesByChat(receiver).get(chat.id)?.length).toBe(5),
      40_000,
    );
    const got = firstDeliveriesByChat(receiver).get(chat.id) ?? [];
    expect(got.map(seqOf)).toEqual([1, 2, 3, 4, 5]);
    // Within seconds of the database's return (claims and outcome writes retry at most a second
    // apart); bounded generously for a busy machine (the job queue before took up to 17 s).
    console.log(`caught up ${(got.at(-1)?.at ?? 0) - restoredAt} ms after Postgres came back`);
    expect((got.at(-1)?.at ?? 0) - restoredAt).toBeLessThan(10_000);
    // Any redelivery (delivered while the database was away, so not yet marked) has the same id.
    const ids = new Set(receiver.delivered.map((d) => d.id));
    expect(ids.size).toBe(5);
    const sql = openSql(tdb.url);
    cleanups.push(() => sql.end());
    await eventually(async () => {
      const [row] = await sql<{ n: number }[]>`select count(*)::int as n from app_events`;
      expect(row?.n).toBe(0);
    }, 10_000);
  });
});

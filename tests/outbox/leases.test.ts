/**
 * The outbox's delivery under per-chat leases (drizzle/0011_app_event_leases.sql,
 * services/app-event-delivery.ts): inserts enqueue plain rows (no job queue, no NOTIFY), a
 * backlog is claimed and deleted in batches, nodes racing for the same chats deliver each event
 * once and each chat in order, and a node cut off from Postgres mid-attempt aborts it before its
 * lease can lapse, so the node that takes over never overlaps it.
 */
import type postgres from "postgres";
import { afterEach, describe, expect, it } from "vitest";
import type { AppWebhookConfig } from "../../server/src/config.js";
import { createDatabase, type DatabaseHandle } from "../../server/src/db/client.js";
import { createLogger } from "../../server/src/logger.js";
import { Metrics } from "../../server/src/metrics.js";
import {
  AppEventRepository,
  type FinishBatch,
} from "../../server/src/repositories/app-event.repository.js";
import { AppEventDelivery } from "../../server/src/services/app-event-delivery.js";
import { createTestDatabase, type TestDatabase } from "../helpers/db.js";
import { eventually, testWebhookDefaults } from "../helpers/server.js";
import { openSql, userId } from "../realtime/support.js";
import { type Delivery, newSecret, PgProxy, type Receiver, startReceiver } from "./support.js";

const seqOf = (d: Delivery) => Number((d.data.message as { seq?: number } | undefined)?.seq);

/** A repository that counts its finish statements and the events each deleted. */
class CountingRepository extends AppEventRepository {
  finishes: FinishBatch[] = [];
  override async finish(nodeId: string, batch: FinishBatch): Promise<number[]> {
    const seconds = await super.finish(nodeId, batch);
    this.finishes.push(batch);
    return seconds;
  }
}

describe("outbox delivery under leases", () => {
  const cleanups: (() => Promise<unknown>)[] = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
  });

  async function setup(): Promise<{ tdb: TestDatabase; sql: postgres.Sql; receiver: Receiver }> {
    const secret = newSecret();
    const receiver = await startReceiver(secret);
    cleanups.push(() => receiver.close());
    const tdb = await createTestDatabase();
    cleanups.push(() => tdb.drop());
    const sql = openSql(tdb.url);
    cleanups.push(() => sql.end());
    await sql`update app_event_settings set enabled = true`;
    (receiver as Receiver & { secret: string }).secret = secret;
    return { tdb, sql, receiver };
  }

  /** `chats` chats of one user, each with `perChat` user messages stored in one statement. */
  async function storeBacklog(sql: postgres.Sql, chats: number, perChat: number) {
    const [user] = await sql<{ id: string }[]>`
      insert into users (clerk_id) values (${userId("lease")}) returning id`;
    const ids: string[] = [];
    for (let c = 0; c < chats; c++) {
      const [chat] = await sql<{ id: string }[]>`
        insert into chat_sessions (user_id, title) values (${user?.id ?? ""}, ${`chat ${c}`})
        returning id`;
      const chatId = chat?.id ?? "";
      ids.push(chatId);
      const rows = Array.from({ length: perChat }, (_, m) => ({
        session_id: chatId,
        message: sql.json({ role: "user", content: `m${m}` }),
        client_id: `c${m}`,
      }));
      await sql`insert into chat_memory ${sql(rows, "session_id", "message", "client_id")}`;
    }
    return ids;
  }

  function node(
    url: string,
    receiver: Receiver,
    overrides: Partial<AppWebhookConfig> = {},
    repositoryClass: typeof AppEventRepository = AppEventRepository,
  ) {
    const config: AppWebhookConfig = {
      ...testWebhookDefaults,
      url: receiver.url,
      secret: (receiver as Receiver & { secret: string }).secret,
      ...overrides,
    };
    const database: DatabaseHandle = createDatabase(url, {
      max: 6,
      settings: { synchronous_commit: "off" },
    });
    const repository = new repositoryClass(database.sql);
    const delivery = new AppEventDelivery({
      repository,
      webhook: config,
      logger: createLogger("silent"),
      metrics: new Metrics(),
    });
    cleanups.push(async () => {
      await delivery.stop();
      await database.close();
    });
    return { delivery, repository };
  }

  function firstByChat(receiver: Receiver): Map<string, Delivery[]> {
    const seen = new Set<string>();
    const byChat = new Map<string, Delivery[]>();
    for (const d of receiver.delivered) {
      if (seen.has(d.id)) continue;
      seen.add(d.id);
      const chatId = String(d.data.chatId);
      byChat.set(chatId, [...(byChat.get(chatId) ?? []), d]);
    }
    return byChat;
  }

  it("enqueues rows only: inserts need no job-queue schema, and no NOTIFY reaches a listener", async () => {
    const { tdb, sql, receiver } = await setup();
    // graphile-worker's schema is gone (0011), and nothing in the insert's path needs it.
    const [schema] = await sql<{ n: number }[]>`
      select count(*)::int as n from pg_namespace where nspname = 'graphile_worker'`;
    expect(schema?.n).toBe(0);
    const listener = openSql(tdb.url);
    cleanups.push(() => listener.end());
    const notified: string[] = [];
    for (const channel of ["jobs:insert", "app_events"]) {
      await listener.listen(channel, (payload) => notified.push(`${channel}: ${payload}`));
    }
    const [chatId] = await storeBacklog(sql, 1, 3);
    const [row] = await sql<{ n: number }[]>`
      select count(*)::int as n from app_events where chat_id = ${chatId ?? ""}`;
    expect(row?.n).toBe(3);
    // A sentinel NOTIFY sent after the inserts arrives after any NOTIFY they made.
    const sentinel = new Promise<void>((resolve) => {
      void listener.listen("sentinel", () => resolve());
    });
    await new Promise((r) => setTimeout(r, 50));
    await sql`select pg_notify('sentinel', 'x')`;
    await sentinel;
    expect(notified).toEqual([]);

    const { delivery } = node(tdb.url, receiver);
    await delivery.start();
    await eventually(() => expect(firstByChat(receiver).get(chatId ?? "")?.length).toBe(3), 15_000);
  });

  it("delivers a backlog with batched claims and deletes, every chat in order", async () => {
    const { tdb, sql, receiver } = await setup();
    const CHATS = 6;
    const PER_CHAT = 60;
    const chats = await storeBacklog(sql, CHATS, PER_CHAT);
    const { delivery, repository } = node(
      tdb.url,
      receiver,
      { concurrency: 4 },
      CountingRepository,
    );
    await delivery.start();
    await eventually(() => {
      const byChat = firstByChat(receiver);
      for (const chatId of chats) expect(byChat.get(chatId)?.length).toBe(PER_CHAT);
    }, 60_000);
    for (const [chatId, list] of firstByChat(receiver)) {
      expect(chats).toContain(chatId);
      expect(list.map(seqOf)).toEqual(Array.from({ length: PER_CHAT }, (_, i) => i + 1));
    }
    expect(receiver.maxConcurrentPerChat).toBe(1);
    expect(receiver.badSignatures).toBe(0);
    await eventually(async () => {
      const [row] = await sql<{ n: number; leases: number }[]>`
        select (select count(*) from app_events)::int as n,
               (select count(*) from app_event_leases)::int as leases`;
      expect(row).toEqual({ n: 0, leases: 0 });
    }, 10_000);
    // Deletes in batches: far fewer statements than events, and some deleted many at once.
    const counting = repository as CountingRepository;
    const deleted = counting.finishes.reduce((n, f) => n + f.delivered.length, 0);
    expect(deleted).toBe(CHATS * PER_CHAT);
    expect(counting.finishes.length).toBeLessThan((CHATS * PER_CHAT) / 10);
    expect(Math.max(...counting.finishes.map((f) => f.delivered.length))).toBeGreaterThanOrEqual(
      20,
    );
  });

  it("three nodes racing for the same chats deliver every event once, each chat in order", async () => {
    const { tdb, sql, receiver } = await setup();
    const CHATS = 20;
    const PER_CHAT = 15;
    const chats = await storeBacklog(sql, CHATS, PER_CHAT);
    const nodes = [0, 1, 2].map(() => node(tdb.url, receiver, { concurrency: 8 }));
    // Started together: their first claims race for the same chats.
    await Promise.all(nodes.map((n) => n.delivery.start()));
    await eventually(() => {
      const byChat = firstByChat(receiver);
      for (const chatId of chats) expect(byChat.get(chatId)?.length).toBe(PER_CHAT);
    }, 60_000);
    for (const list of firstByChat(receiver).values()) {
      expect(list.map(seqOf)).toEqual(Array.from({ length: PER_CHAT }, (_, i) => i + 1));
    }
    // The receiver never failed and no node died: nothing was delivered twice.
    expect(receiver.attempts).toHaveLength(CHATS * PER_CHAT);
    expect(receiver.maxConcurrentPerChat).toBe(1);
    expect(receiver.maxConcurrentPerId).toBe(1);
  });

  it("a node cut off from Postgres mid-attempt aborts it before its lease lapses; the next node never overlaps it", async () => {
    const { tdb, sql, receiver } = await setup();
    const proxy = new PgProxy("127.0.0.1", Number(new URL(tdb.url).port || 5432));
    await proxy.listen();
    cleanups.push(() => proxy.close());
    // The attempt's own timeout (2.9 s) is longer than the node trusts its lease once it cannot
    // renew it (4/5 of 3 s): only the lease makes the node give up the attempt in time.
    const timing = { timeoutMs: 2900, nodeTimeoutMs: 3000 };
    let first = true;
    receiver.answer = () => {
      if (!first) return 204;
      first = false;
      return "hang";
    };
    const cutOff = node(proxy.via(tdb.url), receiver, timing);
    await cutOff.delivery.start();
    const [chatId] = await storeBacklog(sql, 1, 2);
    await eventually(() => expect(receiver.attempts).toHaveLength(1), 15_000);
    const hangingId = receiver.attempts[0]?.id;
    proxy.cut();
    const cutAt = Date.now();
    // The survivor reaches Postgres directly; it may take the chat only once the lease lapsed.
    const survivor = node(tdb.url, receiver, timing);
    await survivor.delivery.start();
    await eventually(() => expect(firstByChat(receiver).get(chatId ?? "")?.length).toBe(2), 20_000);
    const takeover = receiver.attempts.find((a, i) => i > 0 && a.id === hangingId);
    expect(takeover).toBeDefined();
    // The cut-off node's hanging request was closed before the takeover's arrived.
    expect(receiver.maxConcurrentPerId).toBe(1);
    expect((takeover?.at ?? 0) - cutAt).toBeLessThan(12_000);
    expect(
      firstByChat(receiver)
        .get(chatId ?? "")
        ?.map(seqOf),
    ).toEqual([1, 2]);
  });
});

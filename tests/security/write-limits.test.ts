/**
 * Per-user write limits, against a real server, Postgres and Redis: every write a user can make
 * (chat:create, chat:rename, chat:delete, message:send) is counted per user, across all their
 * sockets and across nodes, with limits that follow `users.subscription_tier`. Before, nothing
 * limited chat writes: one user with 10 sockets created 1,749 chats in 10 s.
 */
import { randomBytes } from "node:crypto";
import type postgres from "postgres";
import { afterAll, describe, expect, test } from "vitest";
import { type ProtocolError, retryableErrorCodes } from "../../protocol/index.js";
import { ConfigError, loadConfig } from "../../server/src/config.js";
import { resolveTiers } from "../../server/src/services/rate-limits.js";
import {
  type ClientSocket,
  startTestServer,
  type TestServer,
  type TestServerOptions,
  testRedisUrl,
} from "../helpers/server.js";
import { command, ok, openSql, userId } from "../realtime/support.js";

const LIMITS = {
  chatCreatesPerMinute: 5,
  chatEditsPerMinute: 6,
  messagesPerWindow: 4,
  messageWindowSeconds: 60,
};

const servers: TestServer[] = [];
const sqls: postgres.Sql[] = [];
afterAll(async () => {
  for (const sql of sqls) await sql.end({ timeout: 5 });
  for (const s of servers.reverse()) await s.close();
});

async function start(options: TestServerOptions = {}): Promise<TestServer> {
  const server = await startTestServer({ rateLimits: LIMITS, ...options });
  servers.push(server);
  return server;
}

function sqlOf(server: TestServer): postgres.Sql {
  const sql = openSql(server.databaseUrl);
  sqls.push(sql);
  return sql;
}

/** A user whose row exists with `tier` before their first connection. */
async function userWithTier(server: TestServer, label: string, tier: string | null) {
  const id = userId(label);
  await sqlOf(server)`insert into users (clerk_id, subscription_tier) values (${id}, ${tier})`;
  return id;
}

async function sockets(server: TestServer, uid: string, n: number): Promise<ClientSocket[]> {
  return Promise.all(Array.from({ length: n }, () => server.connectAs(uid)));
}

/** Sends `perSocket` copies of a command on every socket at once; tallies ok / error codes. */
async function burst(
  list: ClientSocket[],
  perSocket: number,
  send: (s: ClientSocket, i: number) => ReturnType<typeof command>,
) {
  const acks = await Promise.all(
    list.flatMap((s, j) => Array.from({ length: perSocket }, (_, i) => send(s, j * perSocket + i))),
  );
  const tally: Record<string, number> = {};
  for (const a of acks) {
    const key = a.ok ? "ok" : a.error.code;
    tally[key] = (tally[key] ?? 0) + 1;
  }
  const refusals = acks.filter((a) => !a.ok).map((a) => (a as { error: ProtocolError }).error);
  return { tally, refusals };
}

async function chatsOf(server: TestServer, uid: string): Promise<number> {
  const [row] = await sqlOf(server)`
    select count(*)::int as n from chat_sessions c join users u on u.id = c.user_id
     where u.clerk_id = ${uid}`;
  return (row as { n: number }).n;
}

describe("per-user write limits", () => {
  test("one user with 10 sockets cannot create more chats than the limit; the refusals say when to retry", async () => {
    const server = await start();
    const uid = userId("creates");
    const { tally, refusals } = await burst(await sockets(server, uid, 10), 5, (s) =>
      command(s, "chat:create", { title: "flood" }),
    );
    expect(tally).toEqual({ ok: 5, RATE_LIMITED: 45 });
    for (const e of refusals) {
      expect(e.retryAfterMs).toBeGreaterThan(0);
      expect(e.retryAfterMs).toBeLessThanOrEqual(60_000);
      expect(e.message).toBe("Too many chats created; slow down");
    }
    expect(retryableErrorCodes.has("RATE_LIMITED")).toBe(true);
    expect(await chatsOf(server, uid)).toBe(5);
    // Another user is not affected.
    const other = await server.connectAs(userId("creates_other"));
    await ok(other, "chat:create", { title: "mine" });
  });

  test("a pro user gets the higher limit (4 × free); an unknown tier gets free's", async () => {
    const server = await start();
    const pro = await userWithTier(server, "pro", "pro");
    const proResult = await burst(await sockets(server, pro, 10), 5, (s) =>
      command(s, "chat:create", { title: "pro" }),
    );
    expect(proResult.tally).toEqual({ ok: 20, RATE_LIMITED: 30 });
    expect(await chatsOf(server, pro)).toBe(20);

    for (const tier of ["platinum", null]) {
      const uid = await userWithTier(server, "odd_tier", tier);
      const result = await burst(await sockets(server, uid, 2), 5, (s) =>
        command(s, "chat:create", { title: "odd" }),
      );
      expect(result.tally, String(tier)).toEqual({ ok: 5, RATE_LIMITED: 5 });
    }
  });

  test("renames and deletes share one limit; messages have theirs, by tier", async () => {
    const server = await start({
      rateLimits: { ...LIMITS, chatCreatesPerMinute: 50, tiers: { pro: { messages: 10 } } },
    });
    const uid = userId("edits");
    const [a, b] = await sockets(server, uid, 2);
    if (!a || !b) throw new Error("two sockets");
    const chats = await Promise.all(
      Array.from({ length: 8 }, () => ok(a, "chat:create", { title: "t" })),
    );
    const ids = chats.map((c) => c.chat.id);
    const edits = await Promise.all([
      ...ids.slice(0, 4).map((chatId, i) => command(a, "chat:rename", { chatId, title: `r${i}` })),
      ...ids.slice(4).map((chatId) => command(b, "chat:delete", { chatId })),
    ]);
    expect(edits.filter((e) => e.ok)).toHaveLength(6);
    expect(edits.filter((e) => !e.ok && e.error.code === "RATE_LIMITED")).toHaveLength(2);

    const sends = await burst([a, b], 4, (s, i) =>
      command(s, "message:send", { chatId: ids[0], clientId: `m${i}`, content: "hi" }),
    );
    expect(sends.tally).toEqual({ ok: 4, RATE_LIMITED: 4 });

    // RATE_LIMIT_TIERS-style override: pro's messages are 10, not 4 × 4.
    const pro = await userWithTier(server, "edits_pro", "PRO");
    const [p] = await sockets(server, pro, 1);
    if (!p) throw new Error("socket");
    const { chat } = await ok(p, "chat:create", { title: "p" });
    const proSends = await burst([p], 14, (s, i) =>
      command(s, "message:send", { chatId: chat.id, clientId: `p${i}`, content: "hi" }),
    );
    expect(proSends.tally).toEqual({ ok: 10, RATE_LIMITED: 4 });
  });

  test("the limit holds across nodes (Redis)", async () => {
    const prefix = `wl-${randomBytes(4).toString("hex")}`;
    const a = await start({ redisUrl: testRedisUrl, redisKeyPrefix: prefix });
    const b = await start({
      redisUrl: testRedisUrl,
      redisKeyPrefix: prefix,
      databaseUrl: a.databaseUrl,
    });
    const uid = userId("nodes");
    const list = [...(await sockets(a, uid, 3)), ...(await sockets(b, uid, 3))];
    const { tally } = await burst(list, 4, (s) => command(s, "chat:create", { title: "n" }));
    expect(tally).toEqual({ ok: 5, RATE_LIMITED: 19 });
    expect(await chatsOf(a, uid)).toBe(5);
  });
});

describe("RATE_LIMIT_TIERS", () => {
  test("defaults: free from RATE_LIMIT_MESSAGES, pro 4 ×, enterprise 10 ×; overrides per field", () => {
    const c = loadConfig({
      RATE_LIMIT_MESSAGES: "30",
      RATE_LIMIT_TIERS: '{"pro":{"chatCreates":100},"Team":{"messages":50}}',
    });
    const tiers = resolveTiers(c.rateLimits);
    expect(Object.fromEntries(tiers)).toEqual({
      free: { messages: 30, chatCreates: 20, chatEdits: 60 },
      pro: { messages: 120, chatCreates: 100, chatEdits: 240 },
      enterprise: { messages: 300, chatCreates: 200, chatEdits: 600 },
      team: { messages: 50, chatCreates: 20, chatEdits: 60 },
    });
  });

  test("a malformed value stops the start, naming the variable", () => {
    for (const bad of ["not json", '{"pro":{"messages":0}}', '{"pro":{"burst":3}}', "[1]"]) {
      expect(() => loadConfig({ RATE_LIMIT_TIERS: bad }), bad).toThrow(ConfigError);
      expect(() => loadConfig({ RATE_LIMIT_TIERS: bad }), bad).toThrow(/RATE_LIMIT_TIERS/);
    }
  });
});

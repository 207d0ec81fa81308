/**
 * A purge storm: while busy sockets send and read, a loop terminates the node's Postgres
 * connections (`pg_terminate_backend`, what a failover, a pooler restart or an idle-connection
 * reaper does) every 5–65 ms. The node is a real `npm start` process in production mode, so an
 * unhandled rejection (postgres.js dropping the promise of its array-type fetch when a new
 * connection is terminated, porsager/postgres#1192) would end it. The process must stay up;
 * every command must either succeed or answer the retryable UNAVAILABLE; every acknowledged
 * message is then in the database exactly once.
 */
import { randomUUID } from "node:crypto";
import type postgres from "postgres";
import { io } from "socket.io-client";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import type { Ack } from "../../protocol/index.js";
import { APPLICATION_NAME } from "../../server/src/db/client.js";
import { adminSql, createTestDatabase, type TestDatabase } from "../helpers/db.js";
import {
  AUTHORIZED_PARTY,
  type ClientSocket,
  eventually,
  testKeys,
  tokenFor,
} from "../helpers/server.js";
import { type ServerProcess, startServerProcess } from "../helpers/server-process.js";
import { openSql } from "../realtime/support.js";

const SOCKETS = 4;
const STORM_MS = 8000;
/** Most commands one socket sends during the storm (the loop is also bounded by time). */
const MAX_COMMANDS_PER_SOCKET = 3000;

let node: ServerProcess;
let tdb: TestDatabase;
let url: string;

beforeAll(async () => {
  tdb = await createTestDatabase();
  node = await startServerProcess({
    env: {
      NODE_ENV: "production",
      HOST: "127.0.0.1",
      DATABASE_URL: tdb.url,
      DATABASE_POOL_SIZE: "4",
      CLERK_JWT_KEY: testKeys.publicKeyPem,
      CLERK_AUTHORIZED_PARTIES: AUTHORIZED_PARTY,
      // The storm, not the flood limits, is under test.
      RATE_LIMIT_MESSAGES: "1000000",
      RATE_LIMIT_COMMANDS_PER_SECOND: "100000",
      RATE_LIMIT_COMMAND_BURST: "100000",
      LOG_LEVEL: "info",
    },
  });
  url = node.url;
});

afterAll(async () => {
  await node?.stop();
  await tdb?.drop();
});

function connect(userId: string, token: string): Promise<ClientSocket> {
  const s: ClientSocket = io(url, {
    auth: { token },
    transports: ["websocket"],
    reconnection: false,
  });
  return new Promise((resolve, reject) => {
    s.once("connect", () => resolve(s));
    s.once("connect_error", (e) => reject(new Error(`${userId}: ${e.message}`)));
  });
}

/** Terminates the node's connections to its database, every 5–65 ms, until `until`. */
async function purgeStorm(admin: postgres.Sql, database: string, until: number) {
  let purges = 0;
  let terminated = 0;
  for (let i = 0; i < 5000 && Date.now() < until; i++) {
    const rows = await admin`
      select pg_terminate_backend(pid) as killed from pg_stat_activity
       where application_name = ${APPLICATION_NAME} and datname = ${database}`;
    purges++;
    terminated += rows.filter((r) => r.killed).length;
    await new Promise((r) => setTimeout(r, 5 + Math.random() * 60));
  }
  return { purges, terminated };
}

describe("a purge storm under load", () => {
  test("the node stays up; every command succeeds or answers UNAVAILABLE; acked messages are stored once", async () => {
    const users = Array.from({ length: SOCKETS }, (_, i) => `user_purge_${i}`);
    const sockets = await Promise.all(users.map(async (u) => connect(u, await tokenFor(u))));
    const chats: string[] = [];
    for (const s of sockets) {
      const ack = await s.timeout(10_000).emitWithAck("chat:create", { title: "storm" });
      if (!ack.ok) throw new Error(JSON.stringify(ack.error));
      chats.push(ack.data.chat.id);
    }

    const outcomes: Record<string, number> = {};
    const acked = new Map<string, string>(); // clientId -> chatId
    const unexpected: string[] = [];
    const tally = (name: string, ack: Ack<unknown>) => {
      const key = ack.ok ? "ok" : ack.error.code;
      outcomes[`${name} ${key}`] = (outcomes[`${name} ${key}`] ?? 0) + 1;
      if (!ack.ok && ack.error.code !== "UNAVAILABLE") {
        unexpected.push(`${name}: ${JSON.stringify(ack.error)}`);
      }
    };

    const admin = adminSql();
    const until = Date.now() + STORM_MS;
    try {
      const storm = purgeStorm(admin, tdb.name, until);
      await Promise.all(
        sockets.map(async (s, i) => {
          const chatId = chats[i] as string;
          for (let n = 0; n < MAX_COMMANDS_PER_SOCKET && Date.now() < until; n++) {
            try {
              if (n % 3 === 2) {
                tally(
                  "history",
                  await s.timeout(10_000).emitWithAck("message:history", { chatId, limit: 20 }),
                );
              } else {
                const clientId = randomUUID();
                const ack = await s
                  .timeout(10_000)
                  .emitWithAck("message:send", { chatId, clientId, content: `storm ${n}` });
                tally("send", ack);
                if (ack.ok) acked.set(clientId, chatId);
              }
            } catch (e) {
              unexpected.push(`no ack: ${String(e)}`);
            }
          }
        }),
      );
      const { purges, terminated } = await storm;
      console.log(
        `[purge storm] ${purges} purges terminated ${terminated} connections; outcomes ${JSON.stringify(outcomes)}`,
      );
      expect(purges).toBeGreaterThan(20);
      expect(terminated).toBeGreaterThan(10);
    } finally {
      await admin.end();
    }

    // The process is alive and serves again.
    expect(node.exit).toBeUndefined();
    expect((await fetch(`${url}/healthz`)).status).toBe(200);
    expect(unexpected).toEqual([]);
    expect(outcomes["send ok"] ?? 0).toBeGreaterThan(10);
    for (const s of sockets) expect(s.connected).toBe(true);
    const after = await eventually(async () => {
      const ack = await (sockets[0] as ClientSocket).timeout(10_000).emitWithAck("message:send", {
        chatId: chats[0] as string,
        clientId: randomUUID(),
        content: "after the storm",
      });
      if (!ack.ok) throw new Error(JSON.stringify(ack.error));
      return ack.data;
    }, 20_000);
    expect(after.duplicate).toBe(false);

    // Every acknowledged message is stored exactly once, in its chat.
    const sql = openSql(tdb.url);
    try {
      const rows = await sql<{ client_id: string; session_id: string; n: number }[]>`
        select client_id, session_id::text, count(*)::int as n from chat_memory
         group by client_id, session_id`;
      const stored = new Map(rows.map((r) => [r.client_id, r]));
      for (const [clientId, chatId] of acked) {
        expect(stored.get(clientId)).toEqual({ client_id: clientId, session_id: chatId, n: 1 });
      }
      // seq stays 1..n per chat, whatever was cut mid-statement.
      const gaps = await sql`
        select session_id from chat_memory group by session_id
        having max(seq) <> count(*) or min(seq) <> 1`;
      expect(gaps).toEqual([]);
    } finally {
      await sql.end({ timeout: 5 });
      for (const s of sockets) s.disconnect();
    }
    // Not even caught by the process-level handler: with fetch_types off, nothing was dropped.
    expect(node.output()).not.toMatch(/unhandled promise rejection|uncaught exception/);
  }, 90_000);
});

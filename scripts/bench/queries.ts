/**
 * `npm run bench:queries -- [--rounds 3] [--ops 1000]`
 *
 * What running Drizzle's queries as prepared statements saves (server/src/db/client.ts): the
 * repository calls behind the chat commands, on the server's own pool (createDatabase), with
 * Drizzle's queries prepared (as the server runs them) and unprepared (as Drizzle sends them
 * by default: `prepare: false`, so postgres.js describes every query with parameters first),
 * alternately, the order rotating by round. Per operation: wall time (one at a time, so its
 * latency) and this process's CPU time, on a connection of its own straight to Postgres; and
 * round trips (the writes the driver makes, counted by a TCP relay in this process, on a second
 * connection through it). The operations:
 * - find: `ChatRepository.find`, the ownership check `chat:open` makes twice;
 * - rename: `ChatRepository.rename` (`chat:rename`);
 * - create+delete: `ChatRepository.insert` then `delete` (`chat:create`, `chat:delete`);
 * - stats: `UserRepository.statsMany` for one user (the `stats:updated` broadcasts).
 * Prints each round, then medians of the rounds and the ratio prepared / unprepared.
 * Loopback Postgres only; every loop is bounded by count.
 */
import { randomBytes } from "node:crypto";
import { createServer, connect as tcpConnect } from "node:net";
import { parseArgs } from "node:util";
import postgres from "postgres";
import { createDatabase, type DatabaseHandle } from "../../server/src/db/client.js";
import { runMigrations } from "../../server/src/db/migrate.js";
import { ChatRepository } from "../../server/src/repositories/chat.repository.js";
import { UserRepository } from "../../server/src/repositories/user.repository.js";
import { median, round } from "../loadtest/stats.js";
import { loopbackDatabaseUrl } from "./loopback.js";

const { values: args } = parseArgs({
  options: {
    rounds: { type: "string", default: "3" },
    ops: { type: "string", default: "1000" },
    "database-url": { type: "string" },
  },
});
const rounds = Math.min(15, Math.max(1, Number(args.rounds)));
const ops = Math.min(20_000, Math.max(10, Number(args.ops)));
const adminUrl = loopbackDatabaseUrl(args["database-url"]);

type Mode = "prepared" | "unprepared";
const OPERATIONS = ["find", "rename", "create+delete", "stats"] as const;
type Operation = (typeof OPERATIONS)[number];
interface Figure {
  wallUs: number;
  cpuUs: number;
  roundTrips: number;
}

interface Relay {
  url: string;
  writes(): number;
  close(): Promise<void>;
}

/** A relay to Postgres that counts what the pool writes (one write per round trip). */
async function countingRelay(target: URL): Promise<Relay> {
  let writes = 0;
  const server = createServer((client) => {
    const upstream = tcpConnect(Number(target.port || 5432), target.hostname);
    client.on("data", (d) => {
      writes++;
      upstream.write(d);
    });
    upstream.on("data", (d) => client.write(d));
    const drop = () => {
      client.destroy();
      upstream.destroy();
    };
    for (const s of [client, upstream]) {
      s.on("error", drop);
      s.on("close", drop);
    }
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as { port: number }).port;
  const url = new URL(target);
  url.hostname = "127.0.0.1";
  url.port = String(port);
  return {
    url: url.toString(),
    writes: () => writes,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** The repository calls of each operation, on one pool, for one user. */
async function operations(database: DatabaseHandle, clerkId: string) {
  const chats = new ChatRepository(database.db, database.sql);
  const users = new UserRepository(database.db);
  const userId = (await users.upsertSeenMany([clerkId])).get(clerkId)?.id;
  if (!userId) throw new Error("no user row");
  const chat = await chats.insert(userId, { title: "Bench" });
  if (typeof chat === "string") throw new Error(`insert answered ${chat}`);
  const run: Record<Operation, (i: number) => Promise<unknown>> = {
    find: () => chats.find(userId, chat.id),
    rename: (i) => chats.rename(userId, chat.id, `Bench ${i % 7}`),
    "create+delete": async () => {
      const created = await chats.insert(userId, { title: "Short-lived" });
      if (typeof created === "string") throw new Error(`insert answered ${created}`);
      await chats.delete(userId, created.id);
    },
    stats: () => users.statsMany([clerkId]),
  };
  return run;
}

async function measure(url: string, relay: Relay, mode: Mode, clerkId: string) {
  const prepareDrizzle = mode === "prepared";
  // One connection each: every query waits for the one before, as a command's do. Timed on a
  // direct connection; round trips counted on another through the relay (whose own CPU would
  // otherwise count in this process's).
  const timed = createDatabase(url, { max: 1, prepareDrizzle });
  const counted = createDatabase(relay.url, { max: 1, prepareDrizzle });
  try {
    const run = await operations(timed, clerkId);
    const count = await operations(counted, `${clerkId}_counted`);
    const out = {} as Record<Operation, Figure>;
    for (const op of OPERATIONS) {
      for (let i = 0; i < 50; i++) {
        // prepared on the connection, JIT warm
        await run[op](i);
        await count[op](i);
      }
      const writes = relay.writes();
      for (let i = 0; i < 50; i++) await count[op](i);
      const roundTrips = (relay.writes() - writes) / 50;
      const cpu = process.cpuUsage();
      const start = performance.now();
      for (let i = 0; i < ops; i++) await run[op](i);
      const wallUs = ((performance.now() - start) * 1000) / ops;
      const used = process.cpuUsage(cpu);
      out[op] = { wallUs, cpuUs: (used.user + used.system) / ops, roundTrips };
    }
    return out;
  } finally {
    await Promise.all([timed.close(), counted.close()]);
  }
}

async function main() {
  const admin = postgres(adminUrl, { max: 1, onnotice: () => {} });
  const dbName = `bench_queries_${Date.now()}_${randomBytes(3).toString("hex")}`;
  const url = new URL(adminUrl);
  url.pathname = `/${dbName}`;
  await admin.unsafe(`create database "${dbName}"`);
  const relay = await countingRelay(url);
  try {
    await runMigrations(url.toString());
    const results: Record<Mode, Record<Operation, Figure>[]> = { prepared: [], unprepared: [] };
    for (let r = 0; r < rounds; r++) {
      const order: Mode[] = r % 2 === 0 ? ["unprepared", "prepared"] : ["prepared", "unprepared"];
      for (const mode of order) {
        const figures = await measure(url.toString(), relay, mode, `user_bench_${mode}_${r}`);
        results[mode].push(figures);
        const line = OPERATIONS.map((op) => {
          const f = figures[op];
          return `${op} ${round(f.wallUs, 0)} µs wall, ${round(f.cpuUs, 0)} µs CPU, ${round(f.roundTrips, 2)} round trips`;
        }).join("; ");
        console.log(`round ${r + 1} ${mode}: ${line}`);
      }
    }
    console.log(`\nmedians of ${rounds} rounds, ${ops} operations each (prepared / unprepared):`);
    console.log("| Operation | Wall µs | Ratio | CPU µs | Ratio | Round trips |");
    console.log("| --- | --- | --- | --- | --- | --- |");
    for (const op of OPERATIONS) {
      const m = (mode: Mode, k: keyof Figure) => median(results[mode].map((f) => f[op][k]));
      const [pw, uw] = [m("prepared", "wallUs"), m("unprepared", "wallUs")];
      const [pc, uc] = [m("prepared", "cpuUs"), m("unprepared", "cpuUs")];
      console.log(
        `| ${op} | ${round(pw, 0)} / ${round(uw, 0)} | ${round(pw / uw, 2)}× | ${round(pc, 0)} / ${round(uc, 0)} | ${round(pc / uc, 2)}× | ${round(m("prepared", "roundTrips"), 2)} / ${round(m("unprepared", "roundTrips"), 2)} |`,
      );
    }
  } finally {
    await relay.close();
    await admin.unsafe(`drop database if exists "${dbName}" with (force)`);
    await admin.end();
  }
}

await main();

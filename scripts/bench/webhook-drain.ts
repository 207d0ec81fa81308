/**
 * `node --import tsx scripts/bench/webhook-drain.ts [--chats 200] [--per 25] [--concurrency 32]
 *   [--runs 5]`
 *
 * The outbox's delivery alone (docs/benchmarks.md, "Webhooks to the app's backend"): a backlog
 * of `--chats` × `--per` message.created events is stored while no delivery runs, then one
 * AppEventDelivery (in this process, on a pool of its own, as in a node) delivers it to the
 * bench's receiver (scripts/bench/webhook-receiver.ts, its own process, verifying every
 * signature). Per run: events per second until the last arrived, and the CPU time (user +
 * system) per event of this process (the delivery: HTTP client, signing, its queries) and of
 * the receiver. Run 1 is a warm-up (JIT) and is left out of the medians. Loopback only, on a
 * database of its own that is dropped at the end.
 */
import { fork } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import postgres from "postgres";
import { createDatabase } from "../../server/src/db/client.js";
import { runMigrations } from "../../server/src/db/migrate.js";
import { createLogger } from "../../server/src/logger.js";
import { Metrics } from "../../server/src/metrics.js";
import { AppEventRepository } from "../../server/src/repositories/app-event.repository.js";
import { AppEventDelivery } from "../../server/src/services/app-event-delivery.js";
import { median, round } from "../loadtest/stats.js";

const { values: args } = parseArgs({
  options: {
    chats: { type: "string", default: "200" },
    per: { type: "string", default: "25" },
    concurrency: { type: "string", default: "64" },
    runs: { type: "string", default: "5" },
  },
});
const CHATS = Math.min(2000, Math.max(1, Number(args.chats)));
const PER = Math.min(500, Math.max(1, Number(args.per)));
const CONCURRENCY = Math.min(100, Math.max(1, Number(args.concurrency)));
const RUNS = Math.min(20, Math.max(2, Number(args.runs)));
const adminUrl = process.env.TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";

/** CPU seconds (user + system) a process used so far, from /proc (Linux). */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

async function main() {
  const admin = postgres(adminUrl, { max: 1, onnotice: () => {} });
  const name = `bench_drain_${Date.now()}_${randomBytes(3).toString("hex")}`;
  await admin.unsafe(`create database "${name}"`);
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  const secret = `whsec_${randomBytes(32).toString("base64")}`;
  const receiver = fork("scripts/bench/webhook-receiver.ts", [], {
    execArgv: ["--import", "tsx"],
    env: { ...process.env, WEBHOOK_SECRET: secret },
    stdio: ["ignore", "ignore", "inherit", "ipc"],
  });
  let arrived = 0;
  let bad = 0;
  try {
    await runMigrations(url.toString());
    const sql = postgres(url.toString(), { max: 4, onnotice: () => {} });
    const port = await new Promise<number>((resolve) =>
      receiver.on("message", (m: { port?: number; arrivals?: unknown[]; bad?: number }) => {
        if (m.port) resolve(m.port);
        arrived += m.arrivals?.length ?? 0;
        if (m.bad !== undefined) bad = m.bad;
      }),
    );
    await sql`update app_event_settings set enabled = true`;
    const [user] = await sql<{ id: string }[]>`
      insert into users (clerk_id) values ('user_bench_drain') returning id`;
    const chats: string[] = [];
    for (let c = 0; c < CHATS; c++) {
      const [chat] = await sql<{ id: string }[]>`
        insert into chat_sessions (user_id, title) values (${user?.id ?? ""}, ${`chat ${c}`})
        returning id`;
      chats.push(chat?.id ?? "");
    }
    console.log(
      `delivery alone: ${CHATS} chats × ${PER} events, APP_WEBHOOK_CONCURRENCY=${CONCURRENCY}`,
    );
    const results: { rate: number; node: number; receiver: number }[] = [];
    for (let run = 1; run <= RUNS; run++) {
      const before = arrived;
      for (let m = 0; m < PER; m++) {
        const rows = chats.map((chatId, c) => ({
          session_id: chatId,
          message: sql.json({ role: "user", content: `run ${run} message ${m}` }),
          client_id: `r${run}-${m}-${c}`,
        }));
        await sql`insert into chat_memory ${sql(rows, "session_id", "message", "client_id")}`;
      }
      const total = CHATS * PER;
      const database = createDatabase(url.toString(), {
        max: Math.min(CONCURRENCY, 8) + 3,
        settings: { synchronous_commit: "off" },
      });
      const delivery = new AppEventDelivery({
        repository: new AppEventRepository(database.sql),
        webhook: {
          url: `http://127.0.0.1:${port}/hooks`,
          secret,
          timeoutMs: 10_000,
          retryForSeconds: 86_400,
          retryFirstDelayMs: 1000,
          retryMaxDelayMs: 60_000,
          concurrency: CONCURRENCY,
          nodeTimeoutMs: 15_000,
        },
        logger: createLogger("silent"),
        metrics: new Metrics(),
      });
      const cpu0 = process.cpuUsage();
      const receiver0 = cpuSeconds(receiver.pid ?? 0);
      const t0 = performance.now();
      await delivery.start();
      const deadline = Date.now() + 120_000;
      while (arrived - before < total && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 5));
      }
      const seconds = (performance.now() - t0) / 1000;
      const cpu = process.cpuUsage(cpu0);
      const receiverCpu = cpuSeconds(receiver.pid ?? 0) - receiver0;
      await delivery.stop();
      await database.close();
      const got = arrived - before;
      const r = {
        rate: got / seconds,
        node: (cpu.user + cpu.system) / got,
        receiver: (receiverCpu * 1e6) / got,
      };
      if (run > 1) results.push(r);
      console.log(
        `run ${run}${run === 1 ? " (warm-up)" : ""}: ${got}/${total} events in ${round(seconds, 2)} s = ${round(r.rate, 0)}/s; delivery ${round(r.node, 1)} µs CPU/event (${round(((cpu.user + cpu.system) / 1e6 / seconds) * 100, 0)}% of a core), receiver ${round(r.receiver, 1)} µs/event`,
      );
    }
    console.log(
      `| medians of runs 2–${RUNS} | ${round(median(results.map((r) => r.rate)), 0)} events/s | delivery ${round(median(results.map((r) => r.node)), 1)} µs CPU/event | receiver ${round(median(results.map((r) => r.receiver)), 1)} µs CPU/event | bad signatures ${bad} |`,
    );
    await sql.end();
  } finally {
    if (receiver.connected) receiver.disconnect();
    await admin.unsafe(`drop database if exists "${name}" with (force)`).catch(() => {});
    await admin.end();
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);

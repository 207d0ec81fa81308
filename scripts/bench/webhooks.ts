/**
 * `npm run bench:webhooks -- [--runs 3] [--users 200] [--rate 1000] [--seconds 10]
 *   [--saturate 8] [--concurrency 64] [--outage 5] [--skip-overhead] [--skip-outages]
 *   [--profile dir]`
 *
 * The outbox's webhooks, measured (docs/benchmarks.md, "Webhooks to the app's backend"):
 *
 * - latency: one server node (a child process, as in production) stores user messages sent by
 *   `--users` sockets at `--rate` messages/s (the c10k preset's rate) and delivers their events
 *   to a local receiver that verifies every signature; per message, the time from the send's ack
 *   (at the client) to the webhook's arrival (at the receiver), p50 / p99;
 * - throughput: every socket sends as fast as it is acked (four in flight) for `--saturate`
 *   seconds: the rate the server stores messages at, beside the rate the outbox delivers them at
 *   (over the same window, and until the backlog is drained); and, in the same run, the storing
 *   rate with enqueueing off (app_event_settings.enabled = false for that window). For both, the
 *   CPU time (/proc/<pid>/stat, user + system) per message of the node, of the receiver, of the
 *   bench database's Postgres backends and of this process (the sockets), and each one's share
 *   of a core: on minus off is what delivering an event costs, whatever the machine's load;
 * - receiver outage: the receiver answers 503 for `--outage` seconds while messages are sent at
 *   `--rate`; then the time from its return until every event arrived;
 * - Postgres outage: the node reaches Postgres through a TCP proxy. With a backlog pending (the
 *   receiver failing for 2 s of sends), the proxy drops every connection and refuses new ones
 *   for `--outage` seconds; then the time from its return until every event arrived;
 * - overhead: what enqueueing adds to the message insert itself (the trigger and the outbox row):
 *   the same inserts with enqueueing on and off, interleaved, on a database of their own with no
 *   delivery running.
 *
 * Each phase runs `--runs` times; medians are printed with the ratios. Loopback only; every loop
 * is bounded in count and time.
 */
import { type ChildProcess, fork, spawn } from "node:child_process";
import { generateKeyPairSync, randomBytes, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { type AddressInfo, createServer as createNetServer } from "node:net";
import { parseArgs } from "node:util";
import postgres from "postgres";
import { io as connect, type Socket } from "socket.io-client";
import { mintSessionToken } from "../../server/src/auth/dev-keys.js";
import { runMigrations } from "../../server/src/db/migrate.js";
import { PgProxy } from "../../tests/outbox/support.js";
import { median, nowMs, percentile, round } from "../loadtest/stats.js";
import { loopbackDatabaseUrl } from "./loopback.js";

const { values: args } = parseArgs({
  options: {
    runs: { type: "string", default: "3" },
    users: { type: "string", default: "200" },
    rate: { type: "string", default: "1000" },
    seconds: { type: "string", default: "10" },
    saturate: { type: "string", default: "8" },
    concurrency: { type: "string", default: "64" },
    outage: { type: "string", default: "5" },
    "skip-overhead": { type: "boolean", default: false },
    "skip-outages": { type: "boolean", default: false },
    /** Writes a CPU profile of the server node to this folder. */
    profile: { type: "string" },
    "database-url": { type: "string" },
  },
});
const runs = Math.min(9, Math.max(1, Number(args.runs)));
const users = Math.min(2000, Math.max(1, Number(args.users)));
const rate = Math.min(20_000, Math.max(1, Number(args.rate)));
const seconds = Math.min(120, Math.max(1, Number(args.seconds)));
const saturate = Math.min(120, Math.max(1, Number(args.saturate)));
const concurrency = Math.min(100, Math.max(1, Number(args.concurrency)));
const outageS = Math.min(60, Math.max(1, Number(args.outage)));
const CHATS_PER_USER = 2;
const IN_FLIGHT = 4;
const DRAIN_LIMIT_MS = 120_000;
const AUTHORIZED_PARTY = "http://localhost:3000";
const adminUrl = loopbackDatabaseUrl(args["database-url"]);

const log = (...a: unknown[]) => console.log(...a);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const children: ChildProcess[] = [];
const dropLater: string[] = [];

async function freePort(): Promise<number> {
  const s = createNetServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

async function newDatabase(admin: postgres.Sql, label: string): Promise<string> {
  const name = `bench_${label}_${Date.now()}_${randomBytes(3).toString("hex")}`;
  await admin.unsafe(`create database "${name}"`);
  dropLater.push(name);
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  await runMigrations(url.toString());
  return url.toString();
}

/** The app's backend, in a process of its own (webhook-receiver.ts). */
async function startReceiver(secret: string) {
  const child = fork("scripts/bench/webhook-receiver.ts", [], {
    execArgv: ["--import", "tsx"],
    env: { ...process.env, WEBHOOK_SECRET: secret },
    stdio: ["ignore", "ignore", "inherit", "ipc"],
  });
  children.push(child);
  const arrivals = new Map<string, number>();
  let bad = 0;
  let requests = 0;
  const port = await new Promise<number>((resolve, reject) => {
    child.on(
      "message",
      (m: { port?: number; arrivals?: [string, number][]; bad?: number; requests?: number }) => {
        if (m.port) resolve(m.port);
        for (const [id, at] of m.arrivals ?? []) if (!arrivals.has(id)) arrivals.set(id, at);
        if (m.bad !== undefined) bad = m.bad;
        if (m.requests !== undefined) requests = m.requests;
      },
    );
    child.once("exit", (code) => reject(new Error(`receiver exited (${code})`)));
  });
  return {
    url: `http://127.0.0.1:${port}/hooks`,
    arrivals,
    setFailing: (failing: boolean) => child.send({ failing }),
    bad: () => bad,
    requests: () => requests,
    pid: child.pid,
    close: async () => {
      if (child.connected) child.disconnect();
    },
  };
}

async function waitReady(url: string): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    try {
      const res = await fetch(`${url}/readyz`, { signal: AbortSignal.timeout(1000) });
      if (res.ok) return;
    } catch {
      // not up yet
    }
    await sleep(100);
  }
  throw new Error(`${url} did not become ready`);
}

type Client = { socket: Socket; chats: string[] };

function send(c: Client, chatId: string, clientId: string): Promise<number> {
  return c.socket
    .timeout(30_000)
    .emitWithAck("message:send", { chatId, clientId, content: `bench ${clientId}` })
    .then((ack: { ok: boolean; error?: unknown }) => {
      if (!ack.ok) throw new Error(`send refused: ${JSON.stringify(ack.error)}`);
      return nowMs();
    });
}

/** Waits until every id in `ids` arrived, or the limit passes; returns the missing count. */
async function drained(arrivals: Map<string, number>, ids: string[], limitMs: number) {
  const deadline = Date.now() + limitMs;
  for (;;) {
    const missing = ids.filter((id) => !arrivals.has(id)).length;
    if (missing === 0 || Date.now() > deadline) return missing;
    await sleep(50);
  }
}

/** CPU seconds (user + system) a process used so far, from /proc (Linux), or NaN. */
function procCpuSeconds(pid: number | undefined): number {
  if (pid === undefined) return Number.NaN;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
  } catch {
    return Number.NaN;
  }
}
const CLOCK_TICKS = 100;

/** Who is measured: the node, the receiver, the node's Postgres backends, this process (the sockets). */
interface CpuProbe {
  node: number | undefined;
  receiver: number | undefined;
  /** The bench database's backends' pids (pg_stat_activity), read at each sample. */
  backends: () => Promise<number[]>;
}
type CpuSample = { node: number; receiver: number; postgres: number; clients: number };
type CpuMark = { node: number; receiver: number; clients: number; backends: Map<number, number> };

async function cpuMark(probe: CpuProbe): Promise<CpuMark> {
  const pids = await probe.backends();
  const self = process.cpuUsage();
  return {
    node: procCpuSeconds(probe.node),
    receiver: procCpuSeconds(probe.receiver),
    clients: (self.user + self.system) / 1e6,
    backends: new Map(pids.map((pid) => [pid, procCpuSeconds(pid)])),
  };
}

/** CPU seconds used since `start`; Postgres: the backends alive at both marks (pooled, long-lived). */
async function cpuSince(probe: CpuProbe, start: CpuMark): Promise<CpuSample> {
  const end = await cpuMark(probe);
  let postgres = 0;
  for (const [pid, at] of end.backends) {
    const from = start.backends.get(pid);
    if (from !== undefined && Number.isFinite(at - from)) postgres += at - from;
  }
  return {
    node: end.node - start.node,
    receiver: end.receiver - start.receiver,
    postgres,
    clients: end.clients - start.clients,
  };
}

/** CPU per message (ms) and each process's share of one core over the phase. */
function cpuLine(cpu: CpuSample, wallS: number, messages: number): string {
  return (["node", "postgres", "receiver", "clients"] as const)
    .map(
      (k) =>
        `${k} ${round((cpu[k] * 1000) / messages, 3)} ms/msg (${round((cpu[k] / wallS) * 100, 0)}% of a core)`,
    )
    .join(", ");
}

async function latencyPhase(clients: Client[], arrivals: Map<string, number>, run: number) {
  const total = rate * seconds;
  const acks = new Map<string, number>();
  const pending: Promise<void>[] = [];
  const started = nowMs();
  for (let i = 0; i < total; i++) {
    const due = started + (i * 1000) / rate;
    const wait = due - nowMs();
    if (wait > 1) await sleep(wait);
    const c = clients[i % clients.length] as Client;
    const chatId = c.chats[Math.floor(i / clients.length) % c.chats.length] as string;
    const clientId = `r${run}-l-${i}`;
    pending.push(send(c, chatId, clientId).then((at) => void acks.set(clientId, at)));
  }
  await Promise.all(pending);
  const offered = total / ((nowMs() - started) / 1000);
  const missing = await drained(arrivals, [...acks.keys()], DRAIN_LIMIT_MS);
  const latencies = [...acks].flatMap(([id, ack]) => {
    const at = arrivals.get(id);
    return at === undefined ? [] : [at - ack];
  });
  const sorted = latencies.sort((a, b) => a - b);
  return {
    offered: round(offered, 0),
    p50: round(percentile(sorted, 50), 1),
    p99: round(percentile(sorted, 99), 1),
    max: round(sorted.at(-1) ?? Number.NaN, 1),
    missing,
  };
}

async function saturatePhase(
  clients: Client[],
  arrivals: Map<string, number>,
  run: number,
  probe: CpuProbe,
  outbox = true,
) {
  const ids: string[] = [];
  /** When each send was acked (the event is stored then). */
  const ackedAt = new Map<string, number>();
  const mark = await cpuMark(probe);
  const started = nowMs();
  const stopAt = started + saturate * 1000;
  let acked = 0;
  let n = 0;
  await Promise.all(
    clients.flatMap((c) =>
      Array.from({ length: IN_FLIGHT }, async () => {
        while (nowMs() < stopAt) {
          const clientId = `r${run}-${outbox ? "s" : "off"}-${n++}`;
          ids.push(clientId);
          const chatId = c.chats[n % c.chats.length] as string;
          await send(c, chatId, clientId);
          ackedAt.set(clientId, nowMs());
          acked++;
        }
      }),
    ),
  );
  const windowEnd = nowMs();
  if (!outbox) {
    const cpu = await cpuSince(probe, mark);
    const windowS = (windowEnd - started) / 1000;
    return {
      stored: round(acked / windowS, 0),
      acked,
      steady: { stored: 0, delivered: 0, backlogMid: 0, backlogEnd: 0 },
      deliveredInWindow: 0,
      deliveredOverall: 0,
      drainAfterMs: 0,
      missing: 0,
      cpu,
      wallS: windowS,
    };
  }
  const inWindow = ids.filter((id) => (arrivals.get(id) ?? Infinity) <= windowEnd).length;
  const missing = await drained(arrivals, ids, DRAIN_LIMIT_MS);
  // From the window's start until the backlog is drained: storing and delivering every event.
  const cpu = await cpuSince(probe, mark);
  const last = Math.max(...ids.map((id) => arrivals.get(id) ?? 0));
  const windowS = (windowEnd - started) / 1000;
  // Steady state: the window's second half. Events stored and delivered in it, and the backlog
  // (stored, not yet delivered) at its start and end. Delivery that keeps up holds the backlog
  // level (a fixed pipeline delay); one that falls behind grows it by (stored - delivered)/s.
  const mid = started + (windowEnd - started) / 2;
  const count = (times: Iterable<number | undefined>, from: number, to: number) => {
    let k = 0;
    for (const t of times) if (t !== undefined && t > from && t <= to) k++;
    return k;
  };
  const backlogAt = (t: number) =>
    count(ackedAt.values(), -Infinity, t) -
    count(
      ids.map((id) => arrivals.get(id)),
      -Infinity,
      t,
    );
  const halfS = (windowEnd - mid) / 1000;
  const steady = {
    stored: round(count(ackedAt.values(), mid, windowEnd) / halfS, 0),
    delivered: round(
      count(
        ids.map((id) => arrivals.get(id)),
        mid,
        windowEnd,
      ) / halfS,
      0,
    ),
    backlogMid: backlogAt(mid),
    backlogEnd: backlogAt(windowEnd),
  };
  return {
    acked,
    steady,
    cpu,
    wallS: (nowMs() - started) / 1000,
    stored: round(acked / windowS, 0),
    deliveredInWindow: round(inWindow / windowS, 0),
    deliveredOverall: round((ids.length - missing) / ((last - started) / 1000), 0),
    drainAfterMs: round(Math.max(0, last - windowEnd), 0),
    missing,
  };
}

/** Sends at `rate` for `ms`; resolves with the acked clientIds once every send is acked. */
async function offer(clients: Client[], prefix: string, ms: number): Promise<string[]> {
  const total = Math.round((rate * ms) / 1000);
  const ids: string[] = [];
  const pending: Promise<unknown>[] = [];
  const started = nowMs();
  for (let i = 0; i < total; i++) {
    const wait = started + (i * 1000) / rate - nowMs();
    if (wait > 1) await sleep(wait);
    const c = clients[i % clients.length] as Client;
    const chatId = c.chats[Math.floor(i / clients.length) % c.chats.length] as string;
    const clientId = `${prefix}-${i}`;
    pending.push(send(c, chatId, clientId).then(() => ids.push(clientId)));
  }
  await Promise.all(pending);
  return ids;
}

type Receiver = Awaited<ReturnType<typeof startReceiver>>;

/** The receiver answers 503 for `outageS` while messages come; then catch-up time. */
async function receiverOutagePhase(clients: Client[], receiver: Receiver, run: number) {
  receiver.setFailing(true);
  const ids = await offer(clients, `r${run}-ro`, outageS * 1000);
  receiver.setFailing(false);
  const backAt = nowMs();
  const missing = await drained(receiver.arrivals, ids, DRAIN_LIMIT_MS);
  const last = Math.max(...ids.map((id) => receiver.arrivals.get(id) ?? 0));
  return { backlog: ids.length, catchUpMs: round(last - backAt, 0), missing };
}

/** A backlog pending, then Postgres unreachable for `outageS`; then catch-up time. */
async function pgOutagePhase(clients: Client[], receiver: Receiver, proxy: PgProxy, run: number) {
  receiver.setFailing(true);
  const ids = await offer(clients, `r${run}-pg`, 2000);
  proxy.cut();
  receiver.setFailing(false);
  await sleep(outageS * 1000);
  proxy.restore();
  const backAt = nowMs();
  const missing = await drained(receiver.arrivals, ids, DRAIN_LIMIT_MS);
  const last = Math.max(...ids.map((id) => receiver.arrivals.get(id) ?? 0));
  const pendingAtCut = ids.filter((id) => (receiver.arrivals.get(id) ?? Infinity) >= backAt).length;
  return { backlog: pendingAtCut, catchUpMs: round(last - backAt, 0), missing };
}

/** The insert with enqueueing on and off: rows per second, and the statement's p50. */
async function overheadPhase(admin: postgres.Sql) {
  const url = await newDatabase(admin, "outbox_overhead");
  const WRITERS = 20;
  const BATCH = 10;
  const SECONDS = 3;
  const sql = postgres(url, { max: WRITERS, onnotice: () => {} });
  try {
    const chats: string[] = [];
    for (let i = 0; i < WRITERS; i++) {
      const [u] = await sql<{ id: string }[]>`
        insert into users (clerk_id) values (${`user_bench_${i}`}) returning id`;
      const [c] = await sql<{ id: string }[]>`
        insert into chat_sessions (user_id, title) values (${u?.id ?? ""}, 'bench') returning id`;
      chats.push(c?.id ?? "");
    }
    const body = sql.json({ role: "user", content: "a benchmark message of ordinary length" });
    const results: Record<string, { rows: number[]; p50: number[] }> = {
      "on, 1 row": { rows: [], p50: [] },
      "off, 1 row": { rows: [], p50: [] },
      [`on, ${BATCH} rows`]: { rows: [], p50: [] },
      [`off, ${BATCH} rows`]: { rows: [], p50: [] },
    };
    for (let round_ = 0; round_ < runs; round_++) {
      for (const [size, enabled] of [
        [1, true],
        [1, false],
        [BATCH, true],
        [BATCH, false],
      ] as const) {
        await sql`update app_event_settings set enabled = ${enabled}`;
        const durations: number[] = [];
        let rows = 0;
        const stopAt = nowMs() + SECONDS * 1000;
        await Promise.all(
          chats.map(async (chatId) => {
            while (nowMs() < stopAt) {
              const values = Array.from({ length: size }, () => ({
                session_id: chatId,
                message: body,
                client_id: randomUUID(),
              }));
              const t = nowMs();
              await sql`insert into chat_memory ${sql(values, "session_id", "message", "client_id")}`;
              durations.push(nowMs() - t);
              rows += size;
            }
          }),
        );
        const key = `${enabled ? "on" : "off"}, ${size === 1 ? "1 row" : `${BATCH} rows`}`;
        results[key]?.rows.push(rows / SECONDS);
        results[key]?.p50.push(
          percentile(
            durations.sort((a, b) => a - b),
            50,
          ),
        );
      }
    }
    return { results, BATCH, WRITERS };
  } finally {
    await sql.end();
  }
}

async function main() {
  const admin = postgres(adminUrl, { max: 1, onnotice: () => {} });
  const secret = `whsec_${randomBytes(32).toString("base64")}`;
  const receiver = await startReceiver(secret);
  try {
    const url = await newDatabase(admin, "webhooks");
    const benchDb = postgres(url, { max: 1, onnotice: () => {} });
    const proxy = new PgProxy("127.0.0.1", Number(new URL(url).port || 5432));
    await proxy.listen();
    const { privateKey, publicKey } = generateKeyPairSync("rsa", {
      modulusLength: 2048,
      publicKeyEncoding: { type: "spki", format: "pem" },
      privateKeyEncoding: { type: "pkcs8", format: "pem" },
    });
    const port = await freePort();
    const profile = args.profile ? ["--cpu-prof", `--cpu-prof-dir=${args.profile}`] : [];
    const child = spawn(process.execPath, [...profile, "--import", "tsx", "server/src/main.ts"], {
      env: {
        ...process.env,
        NODE_ENV: "production",
        HOST: "127.0.0.1",
        PORT: String(port),
        DATABASE_URL: proxy.via(url),
        CLERK_JWT_KEY: publicKey,
        CLERK_AUTHORIZED_PARTIES: AUTHORIZED_PARTY,
        LOG_LEVEL: "warn",
        MIGRATE_ON_START: "false",
        RATE_LIMIT_MESSAGES: "1000000",
        RATE_LIMIT_CONNECTIONS_PER_MINUTE: "1000000",
        RATE_LIMIT_CONNECTIONS_PER_IP_PER_MINUTE: "1000000",
        RATE_LIMIT_COMMANDS_PER_SECOND: "1000000",
        RATE_LIMIT_COMMAND_BURST: "1000000",
        APP_WEBHOOK_URL: receiver.url,
        APP_WEBHOOK_SECRET: secret,
        APP_WEBHOOK_CONCURRENCY: String(concurrency),
      },
      stdio: ["ignore", "ignore", "inherit"],
    });
    children.push(child);
    const base = `http://127.0.0.1:${port}`;
    await waitReady(base);
    const probe: CpuProbe = {
      node: child.pid,
      receiver: receiver.pid,
      backends: async () =>
        (
          await benchDb<{ pid: number }[]>`
            select pid from pg_stat_activity
             where datname = current_database() and pid <> pg_backend_pid()`
        ).map((r) => r.pid),
    };

    const clients: Client[] = [];
    for (let i = 0; i < users; i++) {
      const token = await mintSessionToken(privateKey, `user_bench_${i}`, {
        authorizedParty: AUTHORIZED_PARTY,
        ttlSeconds: 3600,
      });
      const socket = connect(base, {
        transports: ["websocket"],
        auth: { token },
        reconnection: false,
      });
      await new Promise<void>((resolve, reject) => {
        socket.once("connect", resolve);
        socket.once("connect_error", reject);
      });
      const chats: string[] = [];
      for (let k = 0; k < CHATS_PER_USER; k++) {
        const ack = (await socket
          .timeout(10_000)
          .emitWithAck("chat:create", { title: `bench chat ${k}` })) as {
          data: { chat: { id: string } };
        };
        chats.push(ack.data.chat.id);
      }
      clients.push({ socket, chats });
    }
    log(
      `server: 1 node, APP_WEBHOOK_CONCURRENCY=${concurrency}; ${users} sockets, ${users * CHATS_PER_USER} chats`,
    );

    // Warm-up, not counted: the node's first seconds (module loading, JIT) would otherwise land
    // in run 1's latency.
    const warm = await offer(clients, "warm", 3000);
    await drained(receiver.arrivals, warm, DRAIN_LIMIT_MS);
    const lat: Awaited<ReturnType<typeof latencyPhase>>[] = [];
    const sat: Awaited<ReturnType<typeof saturatePhase>>[] = [];
    const off: Awaited<ReturnType<typeof saturatePhase>>[] = [];
    const ro: Awaited<ReturnType<typeof receiverOutagePhase>>[] = [];
    const pg: Awaited<ReturnType<typeof pgOutagePhase>>[] = [];
    for (let run = 1; run <= runs; run++) {
      const l = await latencyPhase(clients, receiver.arrivals, run);
      log(
        `run ${run} latency @${l.offered} msg/s: ack→webhook p50 ${l.p50} ms, p99 ${l.p99} ms, max ${l.max} ms, missing ${l.missing}`,
      );
      lat.push(l);
      const s = await saturatePhase(clients, receiver.arrivals, run, probe);
      log(
        `run ${run} saturate: stored ${s.stored}/s, delivered ${s.deliveredInWindow}/s in the window, ${s.deliveredOverall}/s until drained (+${s.drainAfterMs} ms), missing ${s.missing}; second half: stored ${s.steady.stored}/s, delivered ${s.steady.delivered}/s, backlog ${s.steady.backlogMid} -> ${s.steady.backlogEnd}`,
      );
      sat.push(s);
      log(`run ${run} saturate CPU: ${cpuLine(s.cpu, s.wallS, s.acked)}`);
      await benchDb`update app_event_settings set enabled = false`;
      const o = await saturatePhase(clients, receiver.arrivals, run, probe, false);
      await benchDb`update app_event_settings set enabled = true`;
      log(`run ${run} saturate, enqueueing off: stored ${o.stored}/s`);
      log(`run ${run} saturate off CPU: ${cpuLine(o.cpu, o.wallS, o.acked)}`);
      off.push(o);
      if (args["skip-outages"]) continue;
      const r = await receiverOutagePhase(clients, receiver, run);
      log(
        `run ${run} receiver down ${outageS} s: ${r.backlog} events waited; all delivered ${r.catchUpMs} ms after it came back, missing ${r.missing}`,
      );
      ro.push(r);
      const p = await pgOutagePhase(clients, receiver, proxy, run);
      log(
        `run ${run} Postgres unreachable ${outageS} s: ${p.backlog} events pending at its return; all delivered ${p.catchUpMs} ms after, missing ${p.missing}`,
      );
      pg.push(p);
    }
    for (const c of clients) c.socket.disconnect();
    log("");
    log(`medians of ${runs} runs`);
    log(
      `| ack → webhook at ${median(lat.map((l) => l.offered))} msg/s | p50 ${median(lat.map((l) => l.p50))} ms | p99 ${median(lat.map((l) => l.p99))} ms |`,
    );
    const stored = median(sat.map((s) => s.stored));
    const inWindow = median(sat.map((s) => s.deliveredInWindow));
    const overall = median(sat.map((s) => s.deliveredOverall));
    const storedOff = median(off.map((s) => s.stored));
    log(`| storing rate (saturated), enqueueing off | ${storedOff} msg/s | 1× |`);
    log(
      `| storing rate (saturated), outbox on | ${stored} msg/s | ${round(stored / storedOff, 2)}× |`,
    );
    log(`| delivery rate, same window | ${inWindow} events/s | ${round(inWindow / stored, 2)}× |`);
    log(`| delivery rate, until drained | ${overall} events/s | ${round(overall / stored, 2)}× |`);
    log(`| backlog drained after the window | ${median(sat.map((s) => s.drainAfterMs))} ms |`);
    const steadyRatio = median(sat.map((s) => s.steady.delivered / s.steady.stored));
    log(
      `| steady state (the window's second half): delivered ÷ stored | ${round(steadyRatio, 3)}× | backlog at its start → end: ${sat.map((s) => `${s.steady.backlogMid} → ${s.steady.backlogEnd}`).join(", ")} |`,
    );
    // CPU per message, saturated: with the outbox (storing and delivering each message, until
    // drained) and without (storing only); the difference is what delivering an event costs.
    for (const k of ["node", "postgres", "receiver", "clients"] as const) {
      const on = median(sat.map((s) => (s.cpu[k] * 1000) / s.acked));
      const offMs = median(off.map((s) => (s.cpu[k] * 1000) / s.acked));
      const share = median(sat.map((s) => (s.cpu[k] / s.wallS) * 100));
      log(
        `| CPU ms per message, ${k}: outbox on (store + deliver) | ${round(on, 3)} | off (store) ${round(offMs, 3)} | delivery ≈ ${round(on - offMs, 3)} ms/event | ${round(share, 0)}% of a core while on |`,
      );
    }
    if (ro.length > 0) {
      log(
        `| receiver down ${outageS} s at ${rate} msg/s: caught up after its return | ${median(ro.map((r) => r.catchUpMs))} ms (runs: ${ro.map((r) => r.catchUpMs).join(" / ")}) | backlog ${median(ro.map((r) => r.backlog))} |`,
      );
      log(
        `| Postgres unreachable ${outageS} s: caught up after its return | ${median(pg.map((r) => r.catchUpMs))} ms (runs: ${pg.map((r) => r.catchUpMs).join(" / ")}) | pending ${median(pg.map((r) => r.backlog))} |`,
      );
    }
    log(`signature failures at the receiver: ${receiver.bad()}; requests: ${receiver.requests()}`);

    if (!args["skip-overhead"]) {
      const o = await overheadPhase(admin);
      log("");
      log(`insert overhead (${o.WRITERS} writers, medians of ${runs} interleaved rounds)`);
      for (const size of ["1 row", `${o.BATCH} rows`]) {
        const on = o.results[`on, ${size}`];
        const off = o.results[`off, ${size}`];
        if (!on || !off) continue;
        const onRows = median(on.rows);
        const offRows = median(off.rows);
        log(
          `| ${size} per statement | off ${round(offRows, 0)} rows/s, p50 ${round(median(off.p50), 2)} ms | on ${round(onRows, 0)} rows/s, p50 ${round(median(on.p50), 2)} ms | on/off ${round(onRows / offRows, 2)}× |`,
        );
      }
    }
    await benchDb.end();
    await proxy.close();
  } finally {
    // A graceful stop, so that a CPU profile gets written; then whatever is left is killed.
    await Promise.all(
      children.map(
        (c) =>
          new Promise<void>((resolve) => {
            if (c.exitCode !== null || c.signalCode !== null) return resolve();
            const timer = setTimeout(resolve, 12_000);
            c.once("exit", () => {
              clearTimeout(timer);
              resolve();
            });
            c.kill("SIGTERM");
          }),
      ),
    );
    for (const c of children) c.kill("SIGKILL");
    await receiver.close();
    for (const name of dropLater) {
      await admin.unsafe(`drop database if exists "${name}" with (force)`).catch(() => {});
    }
    await admin.end();
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err);
    for (const c of children) c.kill("SIGKILL");
    process.exit(1);
  },
);

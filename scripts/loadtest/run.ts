/**
 * `npm run loadtest -- [--preset smoke|small|medium|c10k|idle20k|cluster|handshakes]
 *   [--users N] [--devices N] [--chats N] [--rate msgs/s] [--duration s] [--saturate s]
 *   [--nodes N] [--workers N] [--idle N] [--runs N] [--warmup N] [--url http://127.0.0.1:3000]
 *   [--skip-baselines] [--json file] [--profile] [--private-key key.pem]
 *   [--variant name:KEY=value,KEY=value ...] [--handshake-client raw|socket.io]`
 *
 * Drives real socket.io-client connections from worker processes against server nodes it starts
 * itself (or one given with --url), on loopback only, and prints each product figure beside its
 * baseline measured in the same run: a bare Socket.IO server (transport ceiling) and the same
 * message transaction through postgres.js (database ceiling). Every phase is bounded in count
 * and time. docs/benchmarks.md explains the method and records results.
 */
import { type ChildProcess, fork, spawn } from "node:child_process";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { loadavg } from "node:os";
import { parseArgs } from "node:util";
import { Redis } from "ioredis";
import postgres from "postgres";
import { runMigrations } from "../../server/src/db/migrate.js";
import { measureDatabaseCeiling } from "./db-baseline.js";
import { histogramQuantile, median, nowMs, ratio, round, summarize } from "./stats.js";
import type { HandshakeClient, WorkerCommand, WorkerInit } from "./worker.js";

const presets = {
  smoke: {
    users: 4,
    devices: 2,
    chats: 1,
    rate: 20,
    duration: 2,
    saturate: 1,
    nodes: 1,
    workers: 1,
    idle: 20,
  },
  small: {
    users: 30,
    devices: 3,
    chats: 2,
    rate: 200,
    duration: 10,
    saturate: 5,
    nodes: 1,
    workers: 2,
    idle: 0,
  },
  medium: {
    users: 500,
    devices: 4,
    chats: 2,
    rate: 1000,
    duration: 20,
    saturate: 10,
    nodes: 1,
    workers: 2,
    idle: 0,
  },
  /** The latency target: 1,000 msg/s offered with 10,000 sockets connected to one node. */
  c10k: {
    users: 500,
    devices: 4,
    chats: 2,
    rate: 1000,
    duration: 20,
    saturate: 10,
    nodes: 1,
    workers: 2,
    idle: 8000,
  },
  /**
   * Idle sockets and handshakes: as many sockets on one node as a process may hold here (the
   * machine's hard open-file limit is 20,000 per process, and the server needs some for itself).
   */
  idle20k: {
    users: 100,
    devices: 2,
    chats: 1,
    rate: 100,
    duration: 5,
    saturate: 3,
    nodes: 1,
    workers: 3,
    idle: 19_500,
  },
  /**
   * Only the connection phases (first handshakes of new users, then reconnects), product and
   * bare server alternately, `--runs` rounds (default 3) in one invocation: ratios per round
   * and their median. No messages are sent.
   */
  handshakes: {
    users: 0,
    devices: 1,
    chats: 0,
    rate: 0,
    duration: 0,
    saturate: 0,
    nodes: 1,
    workers: 2,
    idle: 2000,
  },
  /** The c10k load spread over three nodes sharing Redis and Postgres. */
  cluster: {
    users: 500,
    devices: 4,
    chats: 2,
    rate: 1000,
    duration: 20,
    saturate: 10,
    nodes: 3,
    workers: 2,
    idle: 8000,
  },
} as const;

const { values: args } = parseArgs({
  options: {
    preset: { type: "string", default: "small" },
    users: { type: "string" },
    devices: { type: "string" },
    chats: { type: "string" },
    rate: { type: "string" },
    duration: { type: "string" },
    saturate: { type: "string" },
    nodes: { type: "string" },
    workers: { type: "string" },
    idle: { type: "string" },
    /** Rounds of the handshakes preset (each: product, then bare server). Default 3. */
    runs: { type: "string" },
    /**
     * Rounds of the handshakes preset run first and not counted (default 0): both servers'
     * code compiled by V8 before measuring, as on a node that has been up for a while.
     */
    warmup: { type: "string" },
    url: { type: "string" },
    "database-url": { type: "string" },
    "redis-url": { type: "string" },
    "skip-baselines": { type: "boolean", default: false },
    /** Run the server nodes under V8's CPU profiler; profiles land in artifacts/profile-<time>. */
    profile: { type: "boolean", default: false },
    json: { type: "string" },
    /**
     * With --url: the PKCS#8 PEM private key whose public half the target server has as
     * CLERK_JWT_KEY (e.g. .data/dev-keys/private.pem of a development server). Default: a
     * fresh key, which only the nodes this harness starts accept.
     */
    "private-key": { type: "string" },
    /**
     * The product under several configurations, one after another in the same run, each on
     * nodes of its own with these extra environment variables (`name:KEY=value,KEY=value`;
     * repeat the option). The report has a column per variant; ratios are to the first.
     * Example: `--variant classic:REDIS_ADAPTER=classic --variant sharded:REDIS_ADAPTER=sharded`.
     */
    variant: { type: "string", multiple: true },
    /**
     * The client of the idle sockets that the connection phases open: `raw` (a bare WebSocket
     * speaking Engine.IO/Socket.IO, cheap for the load generator) or `socket.io`
     * (socket.io-client). Default raw for the handshakes preset, socket.io for the others.
     */
    "handshake-client": { type: "string" },
  },
});

const preset = presets[args.preset as keyof typeof presets];
if (!preset) {
  console.error(`unknown preset ${args.preset}; choose ${Object.keys(presets).join(", ")}`);
  process.exit(2);
}
const num = (v: string | undefined, d: number, max: number) => {
  const n = v === undefined ? d : Number(v);
  if (!Number.isFinite(n) || n < 0 || n > max) {
    console.error(`bad value ${v} (0..${max})`);
    process.exit(2);
  }
  return n;
};
const p = {
  users: num(args.users, preset.users, 20_000),
  devices: num(args.devices, preset.devices, 20),
  chats: num(args.chats, preset.chats, 20),
  rate: num(args.rate, preset.rate, 50_000),
  duration: num(args.duration, preset.duration, 600),
  saturate: num(args.saturate, preset.saturate, 600),
  nodes: num(args.nodes, preset.nodes, 8),
  workers: num(args.workers, preset.workers, 16),
  idle: num(args.idle, preset.idle, 50_000),
};
/** The handshakes preset: connection phases only, repeated. */
const connectOnly = args.preset === "handshakes";
const runs = connectOnly ? num(args.runs, 3, 20) : 1;
const handshakeClient = (args["handshake-client"] ??
  (connectOnly ? "raw" : "socket.io")) as HandshakeClient;
if (handshakeClient !== "raw" && handshakeClient !== "socket.io") {
  console.error(`bad --handshake-client ${handshakeClient} (raw or socket.io)`);
  process.exit(2);
}
const warmupRounds = connectOnly ? num(args.warmup, 0, 5) : 0;
const adminUrl =
  args["database-url"] ??
  process.env.TEST_DATABASE_URL ??
  "postgres://postgres@127.0.0.1:5432/postgres";
const redisUrl = args["redis-url"] ?? process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379";
if (args.url && !/^https?:\/\/(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?\/?$/.test(args.url)) {
  console.error("--url must be a loopback address (127.0.0.0/8, localhost or [::1])");
  process.exit(2);
}
/** The product's configurations to measure (`--variant`); one, unnamed, by default. */
const variants: { name: string; env: Record<string, string> }[] = (args.variant ?? []).map((v) => {
  const m = /^([\w.-]+):(.*)$/.exec(v);
  const env: Record<string, string> = {};
  for (const pair of (m?.[2] ?? "").split(",").filter(Boolean)) {
    const eq = pair.indexOf("=");
    if (eq <= 0) {
      console.error(`bad --variant ${v} (name:KEY=value,KEY=value)`);
      process.exit(2);
    }
    env[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  if (!m) {
    console.error(`bad --variant ${v} (name:KEY=value,KEY=value)`);
    process.exit(2);
  }
  return { name: m[1] as string, env };
});
if (variants.length > 0 && (args.url || connectOnly)) {
  console.error("--variant needs nodes this harness starts, and a preset with messages");
  process.exit(2);
}
if (variants.length === 0 && args.preset === "cluster" && !args.url) {
  // The cluster preset compares the two Redis adapters side by side (issue #15, item 6).
  variants.push(
    { name: "classic", env: { REDIS_ADAPTER: "classic" } },
    { name: "sharded", env: { REDIS_ADAPTER: "sharded" } },
  );
}
if (variants.length === 0) variants.push({ name: "product", env: {} });
const AUTHORIZED_PARTY = "http://localhost:3000";
/** Postgres pool of each server node, and of the database baseline. */
const SERVER_POOL_SIZE = 20;
const children: ChildProcess[] = [];
const log = (s: string) => process.stderr.write(`${s}\n`);
/** A child that was killed by a signal has a null exitCode but a signalCode. */
const running = (c: ChildProcess) => c.exitCode === null && c.signalCode === null;
// Whatever happens, no server node outlives the harness.
process.on("exit", () => {
  for (const c of children) if (running(c)) c.kill("SIGKILL");
});

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const address = srv.address();
      const port = typeof address === "object" && address ? address.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

async function waitReady(url: string, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      if ((await fetch(`${url}/readyz`)).ok) return;
    } catch {
      // not up yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${url} did not become ready`);
}

/** Process ids of the server nodes by URL (the ones this harness started): /proc/<pid>/io. */
const pidOf = new Map<string, number>();

function startProcess(
  script: string,
  env: Record<string, string>,
  nodeOptions: string[] = [],
): ChildProcess {
  const child = spawn(process.execPath, [...nodeOptions, "--import", "tsx", script], {
    env: { ...process.env, ...env },
    stdio: ["ignore", "ignore", "inherit"],
  });
  children.push(child);
  return child;
}

interface ServerSample {
  rss: number;
  heap: number;
  cpu: number;
  /** Cumulative `le` bucket counts of message:send's server-side time, summed over the nodes. */
  sendBuckets: Map<number, number>;
  /** Room broadcasts started, all nodes (chat_broadcasts_total). */
  broadcasts: number;
  /** Adapter messages received, per node (chat_adapter_messages_received_total). */
  adapterReceived: number[];
  /** Write system calls and bytes written, all nodes (/proc/<pid>/io; NaN when unknown). */
  writeSyscalls: number;
  writeBytes: number;
}

/** syscw and wchar of a process (Linux /proc/<pid>/io), or NaN. */
async function processIo(pid: number | undefined): Promise<{ syscw: number; wchar: number }> {
  if (pid === undefined) return { syscw: Number.NaN, wchar: Number.NaN };
  try {
    const text = await readFile(`/proc/${pid}/io`, "utf8");
    const field = (k: string) => Number(new RegExp(`^${k}: (\\d+)$`, "m").exec(text)?.[1]);
    return { syscw: field("syscw"), wchar: field("wchar") };
  } catch {
    return { syscw: Number.NaN, wchar: Number.NaN };
  }
}

/** Busy and total CPU time of the whole machine so far (Linux /proc/stat), or undefined. */
async function machineCpu(): Promise<{ busy: number; total: number } | undefined> {
  try {
    const line = (await readFile("/proc/stat", "utf8")).split("\n")[0] ?? "";
    const [, ...fields] = line.trim().split(/\s+/);
    const n = fields.map(Number);
    const total = n.reduce((a, b) => a + b, 0);
    const idle = (n[3] ?? 0) + (n[4] ?? 0); // idle + iowait
    return { busy: total - idle, total };
  } catch {
    return undefined;
  }
}

function machineBusy(
  a: { busy: number; total: number } | undefined,
  b: { busy: number; total: number } | undefined,
): number {
  if (!a || !b || b.total === a.total) return Number.NaN;
  return round(((b.busy - a.busy) / (b.total - a.total)) * 100, 0);
}

async function sample(urls: string[]): Promise<ServerSample> {
  const total: ServerSample = {
    rss: 0,
    heap: 0,
    cpu: 0,
    sendBuckets: new Map(),
    broadcasts: 0,
    adapterReceived: [],
    writeSyscalls: 0,
    writeBytes: 0,
  };
  for (const url of urls) {
    const [text, io] = await Promise.all([
      fetch(`${url}/metrics`).then((r) => r.text()),
      processIo(pidOf.get(url)),
    ]);
    const read = (name: string, or = Number.NaN) =>
      Number(new RegExp(`^${name}(?:\\{[^}]*\\})? ([0-9.e+]+)$`, "m").exec(text)?.[1] ?? or);
    total.rss += read("chat_process_resident_memory_bytes");
    total.heap += read("chat_nodejs_heap_size_used_bytes");
    total.cpu += read("chat_process_cpu_seconds_total");
    // The bare server has neither counter: 0.
    total.broadcasts += read("chat_broadcasts_total", 0);
    total.adapterReceived.push(read("chat_adapter_messages_received_total", 0));
    total.writeSyscalls += io.syscw;
    total.writeBytes += io.wchar;
    const bucket = /^chat_command_duration_seconds_bucket\{([^}]*)\} ([0-9.e+]+)$/gm;
    for (const m of text.matchAll(bucket)) {
      const labels = m[1] ?? "";
      if (!labels.includes('command="message:send"')) continue;
      const le = /le="([^"]+)"/.exec(labels)?.[1] ?? "";
      const bound = le === "+Inf" ? Number.POSITIVE_INFINITY : Number(le);
      total.sendBuckets.set(bound, (total.sendBuckets.get(bound) ?? 0) + Number(m[2]));
    }
  }
  return total;
}

/** Redis' own CPU seconds so far (INFO cpu: used_cpu_sys + used_cpu_user), or NaN. */
async function redisCpu(redis: Redis | undefined): Promise<number> {
  if (!redis) return Number.NaN;
  try {
    const info = await redis.info("cpu");
    const field = (k: string) => Number(new RegExp(`^${k}:([0-9.]+)`, "m").exec(info)?.[1]);
    return field("used_cpu_sys") + field("used_cpu_user");
  } catch {
    return Number.NaN;
  }
}

type Reply = { type: string } & Record<string, unknown>;

/** The load-generator processes (worker.ts), each with its own event loop and open-file limit. */
class Workers {
  private readonly workers: ChildProcess[] = [];
  constructor(private readonly inits: WorkerInit[]) {
    for (const _ of inits) {
      const child = fork(new URL("./worker.ts", import.meta.url), {
        execArgv: ["--import", "tsx"],
        stdio: ["ignore", "inherit", "inherit", "ipc"],
      });
      children.push(child);
      this.workers.push(child);
    }
  }
  /** Workers mint their tokens on init (5 ms each is ample, even on a busy machine). */
  async start(): Promise<void> {
    await Promise.all(
      this.workers.map((w, i) => {
        const init = this.inits[i] as WorkerInit;
        const timeoutMs = 30_000 + (init.userIds.length + init.idleUserIds.length) * 5;
        return this.ask(w, { type: "init", init }, "ready", timeoutMs);
      }),
    );
  }
  private ask(w: ChildProcess, cmd: WorkerCommand, expect: string, timeoutMs: number) {
    return new Promise<Reply>((resolve, reject) => {
      const done = (err?: Error, reply?: Reply) => {
        clearTimeout(timer);
        w.off("message", onMessage);
        w.off("exit", onExit);
        if (err) reject(err);
        else resolve(reply as Reply);
      };
      const timer = setTimeout(() => done(new Error(`worker timed out on ${cmd.type}`)), timeoutMs);
      const onMessage = (m: Reply) => {
        if (m.type === "error") done(new Error(String(m.error)));
        else if (m.type === expect) done(undefined, m);
      };
      const onExit = (code: number | null) =>
        done(new Error(`worker exited (${code}) during ${cmd.type}`));
      w.on("message", onMessage);
      w.once("exit", onExit);
      w.send(cmd);
    });
  }
  /** Sends a command to every worker and waits for each one's reply of type `expect`. */
  all(cmd: WorkerCommand, expect: string, timeoutMs: number): Promise<Reply[]> {
    return Promise.all(this.workers.map((w) => this.ask(w, cmd, expect, timeoutMs)));
  }
  async terminate() {
    await Promise.all(
      this.workers.map((w) =>
        running(w) ? new Promise((r) => w.once("exit", r).kill("SIGTERM")) : null,
      ),
    );
  }
}

interface RunResult {
  sockets: number;
  handshakesPerSecond: number;
  /** The client of the idle sockets (--handshake-client). */
  handshakeClient: HandshakeClient;
  /**
   * The servers' CPU while the first handshakes ran, % of one core per node: near 100, the
   * node is what bounds handshakes/s; well below, something else does (the load generator, the
   * machine).
   */
  handshakeServerCpuPercent: number;
  /** The whole machine's CPU busy while the first handshakes ran, % of all cores. */
  handshakeMachineBusyPercent: number;
  /** The load generator's own CPU (all worker processes) per first handshake and reconnect, µs. */
  generatorCpuUsPerHandshake: number;
  generatorCpuUsPerReconnect: number | undefined;
  /** Idle sockets closed and opened again: users the server already knows. */
  reconnectsPerSecond: number | undefined;
  /** Server CPU per first handshake and per reconnect (close + handshake), microseconds. */
  handshakeCpuUs: number;
  reconnectCpuUs: number | undefined;
  idleBytesPerSocket: { rss: number; heap: number };
  offered: {
    ack: ReturnType<typeof summarize>;
    delivery: ReturnType<typeof summarize>;
    acked: number;
    /** Server CPU during the offered phase, % of one core per node. */
    cpuPercent: number;
    /**
     * The whole machine's CPU during the offered phase (load generator, Postgres and Redis
     * included), % busy of all cores: near 100, every process waits for a core.
     */
    machineBusyPercent: number;
    /** Server CPU per acked message during the offered phase, all nodes, µs. */
    cpuUsPerMessage: number;
    /**
     * message:send's server-side time, from receiving the command to writing its ack (the
     * nodes' chat_command_duration_seconds histogram, interpolated in its buckets), ms.
     */
    serverAck: { count: number; p50: number; p99: number };
    /** Write system calls and bytes the nodes made per acked message (/proc/<pid>/io). */
    writeSyscallsPerMessage: number;
    writeBytesPerMessage: number;
    /** Room broadcasts the nodes started per acked message. */
    broadcastsPerMessage: number;
    /**
     * Adapter messages each node received from Redis per broadcast of the whole cluster (one
     * figure per node; 0 on one node, about 1 per node with the classic adapter).
     */
    adapterReceivedPerBroadcast: number[];
    /** Redis' CPU (INFO cpu deltas) during the offered phase: % of one core, and µs per message. */
    redisCpuPercent: number;
    redisCpuUsPerMessage: number;
  };
  completeness: { expected: number; delivered: number; duplicates: number };
  saturatedPerSecond: number;
  errors: Record<string, number>;
  cpuSeconds: number;
}

/** What the handshakes preset measures of one round. */
type ConnectResult = Pick<
  RunResult,
  | "sockets"
  | "handshakesPerSecond"
  | "reconnectsPerSecond"
  | "handshakeCpuUs"
  | "reconnectCpuUs"
  | "handshakeClient"
  | "handshakeServerCpuPercent"
  | "handshakeMachineBusyPercent"
  | "generatorCpuUsPerHandshake"
  | "generatorCpuUsPerReconnect"
> & { errors: Record<string, number> };

async function drive(
  urls: string[],
  bare: boolean,
  keys: { privateKeyPem: string },
  roundIndex?: number,
  redis?: Redis,
): Promise<RunResult> {
  // Each round's users are new users: their first handshake provisions a row.
  const tag = `${bare ? "bare" : "prod"}${roundIndex === undefined ? "" : `_r${roundIndex}`}`;
  const userIds = Array.from({ length: p.users }, (_, i) => `load_${tag}_${i}`);
  const idleIds = Array.from({ length: p.idle }, (_, i) => `idle_${tag}_${i}`);
  const slice = (ids: string[]) => {
    const out: string[][] = Array.from({ length: p.workers }, () => []);
    ids.forEach((u, i) => {
      out[i % p.workers]?.push(u);
    });
    return out;
  };
  const userSlices = slice(userIds);
  const idleSlices = slice(idleIds);
  const inits = userSlices
    .map((s, i) => ({
      urls,
      userIds: s,
      idleUserIds: idleSlices[i] ?? [],
      devicesPerUser: p.devices,
      chatsPerUser: p.chats,
      privateKeyPem: keys.privateKeyPem,
      authorizedParty: AUTHORIZED_PARTY,
      bare,
      connectConcurrency: 50,
      handshakeClient,
    }))
    .filter((w) => w.userIds.length + w.idleUserIds.length > 0);
  const workers = new Workers(inits);
  const senderWorkers = inits.filter((w) => w.userIds.length > 0).length;
  const timeout = 30_000 + (p.users * p.devices + p.idle) * 5;
  try {
    await workers.start();
    const before = await sample(urls);
    const machineBeforeConnect = await machineCpu();
    const connectStarted = nowMs();
    const connected = await workers.all({ type: "connect" }, "connected", timeout);
    const connectWallMs = nowMs() - connectStarted;
    const justConnected = await sample(urls);
    const handshakeMachineBusyPercent = machineBusy(machineBeforeConnect, await machineCpu());
    const sockets = connected.reduce((n, r) => n + Number(r.sockets), 0);
    const connectMs = Math.max(...connected.map((r) => Number(r.ms)));
    const handshakeServerCpuPercent = round(
      ((justConnected.cpu - before.cpu) / (connectWallMs / 1000)) * (100 / urls.length),
      0,
    );
    const sumOf = (rs: Reply[], key: string) => rs.reduce((n, r) => n + Number(r[key] ?? 0), 0);
    const generatorCpuUsPerHandshake = round(sumOf(connected, "cpuUs") / Math.max(1, sockets), 0);
    log(
      `  ${sockets} sockets connected in ${round(connectMs)} ms (${handshakeClient} client; server ${handshakeServerCpuPercent}% of a core, machine ${handshakeMachineBusyPercent}% busy)`,
    );
    await new Promise((r) => setTimeout(r, 1000)); // let allocations settle before sampling
    const idle = await sample(urls);
    // Server CPU per handshake: what bounds the rate once a node's core is busy.
    const handshakeCpuUs = round(((idle.cpu - before.cpu) / Math.max(1, sockets)) * 1e6, 0);
    let reconnectsPerSecond: number | undefined;
    let reconnectCpuUs: number | undefined;
    let generatorCpuUsPerReconnect: number | undefined;
    if (p.idle > 0) {
      const again = await workers.all({ type: "reconnect" }, "reconnected", timeout);
      const n = again.reduce((k, r) => k + Number(r.sockets), 0);
      generatorCpuUsPerReconnect = round(sumOf(again, "cpuUs") / Math.max(1, n), 0);
      reconnectsPerSecond = round((n / Math.max(...again.map((r) => Number(r.ms)))) * 1000);
      // Includes closing the old socket: a reconnect is both, for the server.
      reconnectCpuUs = round((((await sample(urls)).cpu - idle.cpu) / Math.max(1, n)) * 1e6, 0);
      log(`  ${n} idle sockets reconnected (known users) at ${reconnectsPerSecond}/s`);
    }
    if (connectOnly) {
      const errors: Record<string, number> = {};
      for (const r of connected) {
        for (const [k, v] of Object.entries((r.errors ?? {}) as Record<string, number>))
          errors[k] = (errors[k] ?? 0) + v;
      }
      await workers.all({ type: "close" }, "closed", 30_000);
      const result: ConnectResult = {
        sockets,
        handshakesPerSecond: round((sockets / connectMs) * 1000),
        reconnectsPerSecond,
        handshakeCpuUs,
        reconnectCpuUs,
        handshakeClient,
        handshakeServerCpuPercent,
        handshakeMachineBusyPercent,
        generatorCpuUsPerHandshake,
        generatorCpuUsPerReconnect,
        errors,
      };
      return result as RunResult;
    }
    await workers.all({ type: "prepare" }, "prepared", timeout);
    log(`  chats created and opened; offering ${p.rate} msg/s for ${p.duration} s`);
    const beforeSend = await sample(urls);
    const machineBefore = await machineCpu();
    const redisBefore = await redisCpu(redis);
    const sendStarted = nowMs();
    await workers.all(
      { type: "send", ratePerSecond: p.rate / senderWorkers, durationMs: p.duration * 1000 },
      "sent",
      p.duration * 1000 + 60_000,
    );
    // Server CPU while the load was offered, as a share of one core per node: at 100% a node is
    // CPU-bound (Node runs the app on one thread) and queueing sets the latency.
    const afterSend = await sample(urls);
    const offeredSeconds = (nowMs() - sendStarted) / 1000;
    const offeredCpuPercent = round(
      ((afterSend.cpu - beforeSend.cpu) / offeredSeconds) * (100 / urls.length),
      0,
    );
    const machineBusyPercent = machineBusy(machineBefore, await machineCpu());
    const redisSeconds = (await redisCpu(redis)) - redisBefore;
    const reports = await workers.all({ type: "report" }, "report", 30_000);
    const ackedOffered = Math.max(
      1,
      reports.reduce((n, r) => n + Number(r.acked), 0),
    );
    const broadcasts = afterSend.broadcasts - beforeSend.broadcasts;
    const serverAckCount =
      (afterSend.sendBuckets.get(Number.POSITIVE_INFINITY) ?? 0) -
      (beforeSend.sendBuckets.get(Number.POSITIVE_INFINITY) ?? 0);
    const perMessage = {
      cpuUsPerMessage: round(((afterSend.cpu - beforeSend.cpu) / ackedOffered) * 1e6, 0),
      serverAck: {
        count: serverAckCount,
        p50: histogramQuantile(beforeSend.sendBuckets, afterSend.sendBuckets, 0.5),
        p99: histogramQuantile(beforeSend.sendBuckets, afterSend.sendBuckets, 0.99),
      },
      writeSyscallsPerMessage: round(
        (afterSend.writeSyscalls - beforeSend.writeSyscalls) / ackedOffered,
      ),
      writeBytesPerMessage: round((afterSend.writeBytes - beforeSend.writeBytes) / ackedOffered, 0),
      broadcastsPerMessage: round(broadcasts / ackedOffered),
      adapterReceivedPerBroadcast: afterSend.adapterReceived.map((n, i) =>
        broadcasts > 0 ? round((n - (beforeSend.adapterReceived[i] ?? 0)) / broadcasts) : 0,
      ),
      redisCpuPercent: round((redisSeconds / offeredSeconds) * 100, 0),
      redisCpuUsPerMessage: round((redisSeconds / ackedOffered) * 1e6, 0),
    };
    log(`  saturating for ${p.saturate} s (each sender waits for its ack)`);
    const saturated = await workers.all(
      { type: "saturate", durationMs: p.saturate * 1000 },
      "saturated",
      p.saturate * 1000 + 60_000,
    );
    const after = await sample(urls);
    const errors: Record<string, number> = {};
    for (const r of [...connected, ...reports]) {
      for (const [k, v] of Object.entries((r.errors ?? {}) as Record<string, number>))
        errors[k] = (errors[k] ?? 0) + v;
    }
    const flat = (key: string) => reports.flatMap((r) => r[key] as number[]);
    const sum = (rs: Reply[], key: string) => rs.reduce((n, r) => n + Number(r[key]), 0);
    const satMs = Math.max(...saturated.map((r) => Number(r.ms)));
    await workers.all({ type: "close" }, "closed", 30_000);
    return {
      sockets,
      handshakesPerSecond: round((sockets / connectMs) * 1000),
      reconnectsPerSecond,
      handshakeCpuUs,
      reconnectCpuUs,
      handshakeClient,
      handshakeServerCpuPercent,
      handshakeMachineBusyPercent,
      generatorCpuUsPerHandshake,
      generatorCpuUsPerReconnect,
      idleBytesPerSocket: {
        rss: round((idle.rss - before.rss) / Math.max(1, sockets), 0),
        heap: round((idle.heap - before.heap) / Math.max(1, sockets), 0),
      },
      offered: {
        ack: summarize(flat("ackLatencies")),
        delivery: summarize(flat("deliveryLatencies")),
        acked: sum(reports, "acked"),
        cpuPercent: offeredCpuPercent,
        machineBusyPercent,
        ...perMessage,
      },
      completeness: {
        expected: sum(reports, "expectedDeliveries"),
        delivered: sum(reports, "deliveries"),
        duplicates: sum(reports, "duplicates"),
      },
      saturatedPerSecond: round((sum(saturated, "acked") / satMs) * 1000),
      errors,
      cpuSeconds: round(after.cpu - before.cpu),
    };
  } finally {
    await workers.terminate();
  }
}

async function main() {
  const generated = generateKeyPairSync("rsa", {
    modulusLength: 2048,
    publicKeyEncoding: { type: "spki", format: "pem" },
    privateKeyEncoding: { type: "pkcs8", format: "pem" },
  });
  const keys = args["private-key"]
    ? { ...generated, privateKey: await readFile(args["private-key"], "utf8") }
    : generated;
  const admin = postgres(adminUrl, { max: 1, onnotice: () => {} });
  const dbName = `loadtest_${Date.now()}_${randomBytes(3).toString("hex")}`;
  const dbUrl = new URL(adminUrl);
  dbUrl.pathname = `/${dbName}`;
  log(`load test: ${JSON.stringify(p)}`);
  const results: Record<string, unknown> = { params: p, at: new Date().toISOString() };
  try {
    const prefix = `lt-${randomBytes(3).toString("hex")}`;
    const profileDir = `artifacts/profile-${Date.now()}`;
    const nodeOptions = args.profile ? ["--cpu-prof", `--cpu-prof-dir=${profileDir}`] : [];
    /** Starts the product's nodes with `extraEnv`; their URLs and a stop. */
    const startNodes = async (extraEnv: Record<string, string>, index: number) => {
      const urls: string[] = [];
      const started: ChildProcess[] = [];
      for (let i = 0; i < p.nodes; i++) {
        const port = await freePort();
        const node = startProcess(
          "server/src/main.ts",
          {
            NODE_ENV: "production",
            HOST: "127.0.0.1",
            PORT: String(port),
            DATABASE_URL: dbUrl.toString(),
            DATABASE_POOL_SIZE: String(SERVER_POOL_SIZE),
            CLERK_JWT_KEY: keys.publicKey,
            CLERK_AUTHORIZED_PARTIES: AUTHORIZED_PARTY,
            LOG_LEVEL: "warn",
            MIGRATE_ON_START: "false",
            RATE_LIMIT_MESSAGES: "1000000",
            RATE_LIMIT_CONNECTIONS_PER_MINUTE: "1000000",
            // Every simulated device connects from this one address and sends as fast as it can.
            RATE_LIMIT_CONNECTIONS_PER_IP_PER_MINUTE: "1000000",
            RATE_LIMIT_COMMANDS_PER_SECOND: "1000000",
            RATE_LIMIT_COMMAND_BURST: "1000000",
            MAX_SOCKETS_PER_USER: "1000",
            ...(p.nodes > 1 ? { REDIS_URL: redisUrl, REDIS_KEY_PREFIX: `${prefix}-${index}` } : {}),
            ...extraEnv,
          },
          nodeOptions,
        );
        started.push(node);
        urls.push(`http://127.0.0.1:${port}`);
        if (node.pid !== undefined) pidOf.set(`http://127.0.0.1:${port}`, node.pid);
      }
      await Promise.all(urls.map((u) => waitReady(u)));
      return {
        urls,
        stop: () =>
          Promise.all(
            started.map((c) =>
              running(c) ? new Promise((r) => c.once("exit", r).kill("SIGTERM")) : null,
            ),
          ),
      };
    };
    if (!args.url) {
      await admin.unsafe(`create database "${dbName}"`);
      await runMigrations(dbUrl.toString());
      if (args.profile) log(`CPU profiles of the server nodes: ${profileDir}`);
    } else {
      log(
        `driving ${args.url} (it must accept tokens signed with a key you give it; see docs/benchmarks.md)`,
      );
    }
    if (connectOnly) {
      const urls = args.url ? [args.url.replace(/\/$/, "")] : (await startNodes({}, 0)).urls;
      await handshakeRounds(urls, keys.privateKey, results);
      return;
    }
    // Redis' CPU is read only when the nodes share it (more than one node this harness started).
    const redis =
      p.nodes > 1 && !args.url
        ? new Redis(redisUrl, { maxRetriesPerRequest: 1, lazyConnect: true })
        : undefined;
    redis?.on("error", () => {});
    await redis?.connect().catch(() => {});
    const products: [string, RunResult][] = [];
    for (const [index, variant] of variants.entries()) {
      const nodes = args.url
        ? { urls: [args.url.replace(/\/$/, "")], stop: async () => [] }
        : await startNodes(variant.env, index);
      const label =
        variants.length > 1 ? `${variant.name} ${JSON.stringify(variant.env)}` : "product";
      log(`${label} (${nodes.urls.length} node${nodes.urls.length > 1 ? "s" : ""})`);
      // Each variant's users are new users (the tag), on nodes of its own.
      const tag = variants.length > 1 ? index : undefined;
      const result = await drive(nodes.urls, false, { privateKeyPem: keys.privateKey }, tag, redis);
      products.push([variant.name, result]);
      if (variants.length > 1) await nodes.stop();
    }
    redis?.disconnect();
    results.product = products[0]?.[1];
    if (variants.length > 1) {
      results.variants = Object.fromEntries(
        products.map(([name, r], i) => [name, { env: variants[i]?.env, result: r }]),
      );
    }

    let bare: RunResult | undefined;
    let db: Awaited<ReturnType<typeof measureDatabaseCeiling>> | undefined;
    if (!args["skip-baselines"]) {
      const port = await freePort();
      const child = startProcess("scripts/loadtest/bare-server.ts", { PORT: String(port) });
      const bareUrl = `http://127.0.0.1:${port}`;
      if (child.pid !== undefined) pidOf.set(bareUrl, child.pid);
      await waitReady(bareUrl);
      log("baseline: bare Socket.IO (no auth, no database)");
      bare = await drive([bareUrl], true, { privateKeyPem: keys.privateKey });
      child.kill("SIGTERM");
      results.bare = bare;
      if (!args.url) {
        const concurrency = p.users;
        log(
          `baseline: the message transaction through postgres.js, ${concurrency} writers, ${p.saturate} s`,
        );
        db = await measureDatabaseCeiling(
          dbUrl.toString(),
          concurrency,
          p.saturate * 1000,
          SERVER_POOL_SIZE,
        );
        results.databaseCeiling = db;
      }
    }
    print(products, bare, db);
    await mkdir("artifacts", { recursive: true });
    const file = args.json ?? `artifacts/loadtest-${Date.now()}.json`;
    await writeFile(file, JSON.stringify(results, null, 2));
    log(`\nJSON: ${file}`);
  } finally {
    for (const c of children) if (running(c)) c.kill("SIGTERM");
    await Promise.all(
      children.map((c) => (running(c) ? new Promise((r) => c.once("exit", r)) : null)),
    );
    if (!args.url)
      await admin.unsafe(`drop database if exists "${dbName}" with (force)`).catch(() => {});
    await admin.end();
  }
}

/**
 * The handshakes preset: `runs` rounds of product then bare server, fresh users each round;
 * prints each round's figures and ratios, then the medians of the ratios.
 */
async function handshakeRounds(
  urls: string[],
  privateKeyPem: string,
  results: Record<string, unknown>,
): Promise<void> {
  const port = await freePort();
  const bareChild = startProcess("scripts/loadtest/bare-server.ts", { PORT: String(port) });
  const bareUrl = `http://127.0.0.1:${port}`;
  await waitReady(bareUrl);
  const rounds: { product: ConnectResult; bare: ConnectResult; machineBusyPercent: number }[] = [];
  for (let w = 0; w < warmupRounds; w++) {
    log(`warm-up round ${w + 1}/${warmupRounds} (not counted)`);
    await drive(urls, false, { privateKeyPem }, 100 + w);
    await drive([bareUrl], true, { privateKeyPem }, 100 + w);
  }
  for (let r = 0; r < runs; r++) {
    const machineBefore = await machineCpu();
    log(`round ${r + 1}/${runs}: product`);
    const product = (await drive(urls, false, { privateKeyPem }, r)) as ConnectResult;
    log(`round ${r + 1}/${runs}: bare Socket.IO`);
    const bare = (await drive([bareUrl], true, { privateKeyPem }, r)) as ConnectResult;
    rounds.push({
      product,
      bare,
      machineBusyPercent: machineBusy(machineBefore, await machineCpu()),
    });
  }
  bareChild.kill("SIGTERM");
  results.rounds = rounds;
  const div = (a: number | undefined, b: number | undefined) =>
    a !== undefined && b !== undefined && b > 0 ? a / b : Number.NaN;
  const figures = [
    ["first handshakes/s", (x: ConnectResult) => x.handshakesPerSecond],
    ["reconnects/s", (x: ConnectResult) => x.reconnectsPerSecond],
    ["server CPU µs per first handshake", (x: ConnectResult) => x.handshakeCpuUs],
    ["server CPU µs per reconnect", (x: ConnectResult) => x.reconnectCpuUs],
    // What the node's CPU per handshake allows on a core of its own (1,000,000 / µs): the
    // node's capacity, whatever bounded the rate measured above (the generator, the machine).
    [
      "first handshakes/s on a node core",
      (x: ConnectResult) => (x.handshakeCpuUs > 0 ? round(1e6 / x.handshakeCpuUs, 0) : undefined),
    ],
    ["server CPU while connecting, % core", (x: ConnectResult) => x.handshakeServerCpuPercent],
    ["generator CPU µs per first handshake", (x: ConnectResult) => x.generatorCpuUsPerHandshake],
    ["generator CPU µs per reconnect", (x: ConnectResult) => x.generatorCpuUsPerReconnect],
    ["machine busy while connecting, %", (x: ConnectResult) => x.handshakeMachineBusyPercent],
  ] as const;
  const w = [36, 24, 24, 30];
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(w[i] ?? 10)).join(" ");
  console.log(
    `\n${line(["figure", "product (per round)", "bare (per round)", "ratio per round → median"])}`,
  );
  const medians: Record<string, unknown> = {};
  for (const [label, pick] of figures) {
    const ratios = rounds.map((x) => div(pick(x.product), pick(x.bare)));
    medians[label] = {
      product: median(rounds.map((x) => pick(x.product) ?? Number.NaN)),
      bare: median(rounds.map((x) => pick(x.bare) ?? Number.NaN)),
      ratio: round(median(ratios)),
    };
    console.log(
      line([
        label,
        rounds.map((x) => String(pick(x.product))).join(" / "),
        rounds.map((x) => String(pick(x.bare))).join(" / "),
        `${ratios.map((x) => `${round(x)}×`).join(" / ")} → ${round(median(ratios))}×`,
      ]),
    );
  }
  console.log(
    `machine CPU busy per round, %: ${rounds.map((x) => x.machineBusyPercent).join(" / ")}`,
  );
  console.log(
    `handshake client: ${handshakeClient}; load average: ${loadavg()
      .map((l) => round(l))
      .join(" ")}`,
  );
  const errors = rounds.flatMap((x) => [x.product.errors, x.bare.errors]);
  console.log(`errors: ${JSON.stringify(errors.filter((e) => Object.keys(e).length > 0))}`);
  results.medians = medians;
  await mkdir("artifacts", { recursive: true });
  const file = args.json ?? `artifacts/loadtest-${Date.now()}.json`;
  await writeFile(file, JSON.stringify(results, null, 2));
  log(`\nJSON: ${file}`);
}

/**
 * The report: a column per product variant, the baseline's, and the ratio: product ÷ baseline
 * with one variant; with several, each later variant ÷ the first (the baseline stays beside).
 */
function print(products: [string, RunResult][], bare?: RunResult, db?: { perSecond: number }) {
  type Row = string[];
  const [first] = products;
  if (!first) return;
  const several = products.length > 1;
  /** A figure of every run; `ratioOf` picks the number to divide, when a ratio means something. */
  const both = <T>(
    label: string,
    pick: (r: RunResult) => T,
    show: (v: T) => string = String,
    ratioOf?: (v: T) => number | undefined,
  ): Row => {
    const values = products.map(([, r]) => pick(r));
    const b = bare ? pick(bare) : undefined;
    const numbers = values.map((v) => (v === undefined ? undefined : ratioOf?.(v)));
    const br = b === undefined ? undefined : ratioOf?.(b);
    const n0 = numbers[0];
    const ratios = several
      ? numbers
          .slice(1)
          .map((n) => (n !== undefined && n0 !== undefined ? ratio(n, n0) : ""))
          .join(" / ")
      : n0 !== undefined && br !== undefined
        ? ratio(n0, br)
        : "";
    return [
      label,
      ...values.map((v) => (v === undefined ? "" : show(v))),
      b === undefined ? "" : show(b),
      ratioOf ? ratios : "",
    ];
  };
  const num = (v: number | undefined) => v;
  const rows: Row[] = [
    both("sockets", (r) => r.sockets),
    both("first handshakes/s (new users)", (r) => r.handshakesPerSecond, String, num),
    both("reconnects/s (known users)", (r) => r.reconnectsPerSecond, String, num),
    both("server CPU µs per first handshake", (r) => r.handshakeCpuUs, String, num),
    both("server CPU µs per reconnect", (r) => r.reconnectCpuUs, String, num),
    both("server CPU while connecting, % core", (r) => r.handshakeServerCpuPercent),
    both("generator CPU µs per first handshake", (r) => r.generatorCpuUsPerHandshake),
    both("generator CPU µs per reconnect", (r) => r.generatorCpuUsPerReconnect),
    both("machine busy while connecting, %", (r) => r.handshakeMachineBusyPercent),
    both("idle RSS bytes/socket", (r) => r.idleBytesPerSocket.rss, String, num),
    both("idle heap bytes/socket", (r) => r.idleBytesPerSocket.heap, String, num),
    both(
      "send→ack p50/p95/p99 ms",
      (r) => r.offered.ack,
      fmt,
      (s) => s.p99,
    ),
    both(
      "send→other device p50/p95/p99 ms",
      (r) => r.offered.delivery,
      fmt,
      (s) => s.p99,
    ),
    both("messages acked at offered rate", (r) => r.offered.acked),
    both("stored+broadcast msgs/s (closed loop)", (r) => r.saturatedPerSecond, String, num),
    [
      "  vs database ceiling msgs/s",
      ...products.map(([, r]) => String(r.saturatedPerSecond)),
      db ? String(round(db.perSecond)) : "",
      db ? products.map(([, r]) => ratio(r.saturatedPerSecond, db.perSecond)).join(" / ") : "",
    ],
    both(
      "deliveries expected/got/dups",
      (r) => r.completeness,
      (c) => `${c.expected}/${c.delivered}/${c.duplicates}`,
    ),
    both(
      "server-side send→ack p50/p99 ms",
      (r) => r.offered.serverAck,
      (s) => (s.count > 0 ? `${s.p50}/${s.p99}` : ""),
    ),
    both("server CPU at offered rate, % of a core", (r) => r.offered.cpuPercent, String, num),
    both("server CPU µs per message (offered)", (r) => r.offered.cpuUsPerMessage, String, num),
    both("write syscalls per message", (r) => r.offered.writeSyscallsPerMessage, String, num),
    both("bytes written per message", (r) => r.offered.writeBytesPerMessage, String, num),
    both("broadcasts per message", (r) => r.offered.broadcastsPerMessage),
    both(
      "adapter msgs in per broadcast, per node",
      (r) => r.offered.adapterReceivedPerBroadcast,
      (xs) => xs.join(" / "),
    ),
    both(
      "Redis CPU % of a core / µs per message",
      (r) => r.offered,
      (o) =>
        Number.isFinite(o.redisCpuPercent)
          ? `${o.redisCpuPercent} / ${o.redisCpuUsPerMessage}`
          : "",
    ),
    both("machine CPU busy at offered rate, %", (r) => r.offered.machineBusyPercent),
    both("server CPU seconds (whole run)", (r) => r.cpuSeconds),
    both(
      "errors",
      (r) => r.errors,
      (e) => JSON.stringify(e),
    ),
  ];
  const w = [38, ...products.map(() => 26), 26, 8];
  const line = (r: string[]) => r.map((c, i) => c.padEnd(w[i] ?? 10)).join(" ");
  const names = several ? products.map(([name]) => name) : ["product"];
  const ratioHeader = several ? `ratio to ${first[0]}` : "ratio";
  console.log(`\n${line(["figure", ...names, "baseline", ratioHeader])}`);
  for (const r of rows) console.log(line(r));
  const complete = products.every(
    ([, r]) =>
      r.completeness.expected === r.completeness.delivered && r.completeness.duplicates === 0,
  );
  console.log(`\ndelivery complete: ${complete ? "yes" : "NO"}`);
}

function fmt(s: { p50: number; p95: number; p99: number }) {
  return `${s.p50}/${s.p95}/${s.p99}`;
}

main().catch((err) => {
  console.error(err);
  for (const c of children) c.kill("SIGKILL");
  process.exit(1);
});

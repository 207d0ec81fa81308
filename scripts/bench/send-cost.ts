/**
 * `npm run bench:send -- [--users 250] [--devices 4] [--chats 2] [--idle 0] [--rate 1000]
 *   [--messages 6000] [--warmup 3000] [--runs 3] [--profile dir] [--skip-bare]
 *   [--ref-tree dir] [--synchronous-commit on|off]`
 *
 * The server's CPU per message on the send path (docs/benchmarks.md, "CPU per message on the
 * send path"), the product against the bare Socket.IO server (scripts/loadtest/bare-server.ts)
 * in the same invocation. Each run starts, one after the other (the order alternating by run):
 *
 * - one server process: the product (server/src/main.ts, production mode, one node, no Redis,
 *   the same settings as the load test's nodes) or the bare server; both preloaded with
 *   cpu-ipc.ts, which answers this process's `cpu` requests with the server's
 *   `process.cpuUsage()`;
 * - one client process (send-clients.ts) with `users × devices` real sockets (plus `--idle`),
 *   every device with its user's `--chats` chats open.
 *
 * Then `--warmup` messages, not counted (V8 compiles both servers' hot paths), and `--messages`
 * messages at `--rate` msg/s, open loop. The figure is the server process's CPU time (user +
 * system) from just before the first counted send until every send is acked and every device
 * has every message, divided by the messages acked. CPU time of one process is much less
 * distorted by a busy machine than wall time: waiting for a core costs none. Also printed: the
 * product's own send→ack (its `chat_command_duration_seconds` histogram), its messages per
 * group commit, write system calls per message (/proc/<pid>/io) and the client-observed p99.
 * Medians of the runs' figures and of their ratios at the end. `--ref-tree dir` adds the product
 * of another checkout (e.g. `git worktree add /tmp/base main`, with node_modules) to every run:
 * before and after a change, in the same invocation.
 *
 * `--synchronous-commit off` sets it on the bench's database only: commits then do not wait
 * for the WAL's flush, so how long they take (and so how many messages a group commit takes)
 * depends much less on how busy the machine's disk and cores are.
 *
 * Loopback only: a fresh database on the local Postgres (TEST_DATABASE_URL or --database-url),
 * dropped at the end. `--profile dir` records a V8 CPU profile of each server over the counted
 * window only (cpu-ipc.ts; it slows the server, so its CPU figures are not comparable), then
 * `npm run loadtest:profile -- dir` summarizes them.
 */
import { type ChildProcess, fork } from "node:child_process";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { mkdir, readFile } from "node:fs/promises";
import { createServer } from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import postgres from "postgres";
import { mintSessionToken } from "../../server/src/auth/dev-keys.js";
import { runMigrations } from "../../server/src/db/migrate.js";
import { histogramQuantile, median } from "../loadtest/stats.js";
import { loopbackDatabaseUrl } from "./loopback.js";
import type { BatchReport, ClientsInit } from "./send-clients.js";

const { values: args } = parseArgs({
  options: {
    users: { type: "string", default: "250" },
    devices: { type: "string", default: "4" },
    chats: { type: "string", default: "2" },
    idle: { type: "string", default: "0" },
    rate: { type: "string", default: "1000" },
    messages: { type: "string", default: "6000" },
    warmup: { type: "string", default: "3000" },
    runs: { type: "string", default: "3" },
    profile: { type: "string" },
    "skip-bare": { type: "boolean", default: false },
    "ref-tree": { type: "string" },
    "synchronous-commit": { type: "string", default: "on" },
    "database-url": { type: "string" },
  },
});
const clamp = (v: string | undefined, lo: number, hi: number) =>
  Math.min(hi, Math.max(lo, Math.floor(Number(v))));
const USERS = clamp(args.users, 1, 5000);
const DEVICES = clamp(args.devices, 1, 10);
const CHATS = clamp(args.chats, 1, 10);
const IDLE = clamp(args.idle, 0, 15_000);
const RATE = clamp(args.rate, 1, 10_000);
const MESSAGES = clamp(args.messages, 100, 200_000);
const WARMUP = clamp(args.warmup, 0, 200_000);
const RUNS = clamp(args.runs, 1, 9);
const AUTHORIZED_PARTY = "http://localhost:3000";
const adminUrl = loopbackDatabaseUrl(args["database-url"]);

const here = (f: string) => fileURLToPath(new URL(f, import.meta.url));
const children = new Set<ChildProcess>();

function waitFor<T>(child: ChildProcess, type: string, timeoutMs: number): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.off("message", on);
      reject(new Error(`no ${type} from child ${child.pid} within ${timeoutMs} ms`));
    }, timeoutMs);
    const on = (m: { type: string; error?: string }) => {
      if (m.type === "error") {
        clearTimeout(timer);
        child.off("message", on);
        reject(new Error(m.error));
      }
      if (m.type !== type) return;
      clearTimeout(timer);
      child.off("message", on);
      resolve(m as T);
    };
    child.on("message", on);
  });
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

async function waitReady(url: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      const res = await fetch(`${url}/readyz`, { signal: AbortSignal.timeout(2000) });
      if (res.ok) return;
    } catch {
      // not up yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${url} did not become ready`);
}

async function cpuUs(child: ChildProcess): Promise<number> {
  const reply = waitFor<{ usage: NodeJS.CpuUsage }>(child, "cpu", 10_000);
  child.send({ type: "cpu" });
  const { usage } = await reply;
  return usage.user + usage.system;
}

async function processIo(pid: number | undefined): Promise<number> {
  try {
    const text = await readFile(`/proc/${pid}/io`, "utf8");
    return Number(/^syscw: (\d+)$/m.exec(text)?.[1]);
  } catch {
    return Number.NaN;
  }
}

/** Cumulative bucket counts of message:send, and the number of message inserts, from /metrics. */
async function scrape(url: string): Promise<{ buckets: Map<number, number>; inserts: number }> {
  const text = await (await fetch(`${url}/metrics`, { signal: AbortSignal.timeout(5000) })).text();
  const buckets = new Map<number, number>();
  let inserts = 0;
  for (const line of text.split("\n")) {
    if (
      line.startsWith("chat_command_duration_seconds_bucket") &&
      line.includes('"message:send"')
    ) {
      const le = /le="([^"]+)"/.exec(line)?.[1];
      buckets.set(
        le === "+Inf" ? Number.POSITIVE_INFINITY : Number(le),
        Number(line.split(" ")[1]),
      );
    }
    if (line.startsWith("chat_db_query_duration_seconds_count") && line.includes("message_insert"))
      inserts = Number(line.split(" ")[1]);
  }
  return { buckets, inserts };
}

/** The product of this tree, the product of `--ref-tree` (another checkout), the bare server. */
type Target = "product" | "ref" | "bare";

interface Figures {
  target: Target;
  cpuUsPerMsg: number;
  acked: number;
  errors: Record<string, number>;
  complete: boolean;
  syscwPerMsg: number;
  clientP50: number;
  clientP99: number;
  serverP50: number;
  serverP99: number;
  perCommit: number;
  /** Server CPU while the messages were offered, % of one core. */
  cpuPct: number;
}

async function startServer(
  target: Target,
  env: Record<string, string>,
): Promise<{ child: ChildProcess; url: string }> {
  const port = await freePort();
  const script =
    target === "ref"
      ? path.resolve(args["ref-tree"] as string, "server/src/main.ts")
      : here(target === "product" ? "../../server/src/main.ts" : "../loadtest/bare-server.ts");
  const child = fork(script, [], {
    execArgv: ["--import", "tsx", "--import", here("./cpu-ipc.ts")],
    env: { ...process.env, ...env, PORT: String(port) },
    stdio: ["ignore", "ignore", "inherit", "ipc"],
  });
  children.add(child);
  const url = `http://127.0.0.1:${port}`;
  await waitReady(url);
  return { child, url };
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  const exited = new Promise((r) => child.once("exit", r));
  child.kill("SIGTERM");
  await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
  if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  children.delete(child);
}

async function measure(
  target: Target,
  dbUrl: string,
  keys: { publicKey: string; privateKey: string },
  run: number,
): Promise<Figures> {
  const server = await startServer(
    target,
    target !== "bare"
      ? {
          NODE_ENV: "production",
          HOST: "127.0.0.1",
          DATABASE_URL: dbUrl,
          DATABASE_POOL_SIZE: "20",
          CLERK_JWT_KEY: keys.publicKey,
          CLERK_AUTHORIZED_PARTIES: AUTHORIZED_PARTY,
          LOG_LEVEL: "warn",
          MIGRATE_ON_START: "false",
          RATE_LIMIT_MESSAGES: "1000000",
          RATE_LIMIT_CONNECTIONS_PER_MINUTE: "1000000",
          RATE_LIMIT_CONNECTIONS_PER_IP_PER_MINUTE: "1000000",
          RATE_LIMIT_COMMANDS_PER_SECOND: "1000000",
          RATE_LIMIT_COMMAND_BURST: "1000000",
          MAX_SOCKETS_PER_USER: "1000",
        }
      : {},
  );
  const clients = fork(here("./send-clients.ts"), [], {
    execArgv: ["--import", "tsx"],
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  children.add(clients);
  try {
    const tag = `${Date.now().toString(36)}${randomBytes(2).toString("hex")}`;
    const token = async (id: string) =>
      target === "bare"
        ? id
        : mintSessionToken(keys.privateKey, id, {
            ttlSeconds: 3600,
            authorizedParty: AUTHORIZED_PARTY,
          });
    const tokens: string[] = [];
    for (let u = 0; u < USERS; u++) tokens.push(await token(`bench_${tag}_${u}`));
    const idleTokens: string[] = [];
    for (let u = 0; u < IDLE; u++) idleTokens.push(await token(`idle_${tag}_${u}`));
    const init: ClientsInit = {
      url: server.url,
      tokens,
      devicesPerUser: DEVICES,
      chatsPerUser: CHATS,
      idleTokens,
      bare: target === "bare",
    };
    const ready = waitFor(clients, "ready", 300_000);
    clients.send({ type: "init", init });
    await ready;
    const batch = async (count: number) => {
      const done = waitFor<BatchReport>(clients, "sent", 60_000 + (count / RATE) * 3000);
      clients.send({ type: "send", count, ratePerSecond: RATE, timeoutMs: 20_000 });
      return done;
    };
    if (WARMUP > 0) await batch(WARMUP);
    await new Promise((r) => setTimeout(r, 1500)); // stats:updated of the warm-up (1 s debounce)
    const m0 = target !== "bare" ? await scrape(server.url) : undefined;
    const io0 = await processIo(server.child.pid);
    const profileFile = args.profile
      ? path.join(args.profile, `send-${target}-run${run}-${Date.now()}.cpuprofile`)
      : undefined;
    if (profileFile) {
      const started = waitFor(server.child, "profile-started", 10_000);
      server.child.send({ type: "profile-start" });
      await started;
    }
    const cpu0 = await cpuUs(server.child);
    const report = await batch(MESSAGES);
    // Stats broadcasts owed to the counted messages go out up to a second after the last one.
    if (target !== "bare") await new Promise((r) => setTimeout(r, 1200));
    const cpu1 = await cpuUs(server.child);
    if (profileFile) {
      const stopped = waitFor(server.child, "profile-stopped", 30_000);
      server.child.send({ type: "profile-stop", file: path.resolve(profileFile) });
      await stopped;
    }
    const io1 = await processIo(server.child.pid);
    const m1 = target !== "bare" ? await scrape(server.url) : undefined;
    const wallMs = report.ms + (target !== "bare" ? 1200 : 0);
    const at = (q: number) =>
      report.ackMs[Math.min(report.ackMs.length - 1, Math.ceil(q * report.ackMs.length) - 1)] ??
      Number.NaN;
    const figures: Figures = {
      target,
      cpuUsPerMsg: (cpu1 - cpu0) / Math.max(1, report.acked),
      acked: report.acked,
      errors: report.errors,
      complete: report.delivered === report.expected && report.acked === MESSAGES,
      syscwPerMsg: (io1 - io0) / Math.max(1, report.acked),
      clientP50: at(0.5),
      clientP99: at(0.99),
      serverP50: m0 && m1 ? histogramQuantile(m0.buckets, m1.buckets, 0.5) : Number.NaN,
      serverP99: m0 && m1 ? histogramQuantile(m0.buckets, m1.buckets, 0.99) : Number.NaN,
      perCommit: m0 && m1 ? report.acked / Math.max(1, m1.inserts - m0.inserts) : Number.NaN,
      cpuPct: ((cpu1 - cpu0) / 1000 / wallMs) * 100,
    };
    console.error(
      `run ${run} ${target}: ${f(figures.cpuUsPerMsg, 0)} µs CPU/msg, ${figures.acked} acked${
        Object.keys(figures.errors).length ? ` errors ${JSON.stringify(figures.errors)}` : ""
      }, delivered ${report.delivered}/${report.expected}, ${f(figures.syscwPerMsg, 2)} syscw/msg, client p50/p99 ${f(
        figures.clientP50,
      )}/${f(figures.clientP99)} ms${
        target !== "bare"
          ? `, server p50/p99 ${f(figures.serverP50)}/${f(figures.serverP99)} ms, ${f(
              figures.perCommit,
              1,
            )} msgs/commit`
          : ""
      }, ${f(figures.cpuPct, 0)}% of a core; load ${os
        .loadavg()
        .map((l) => l.toFixed(1))
        .join(" ")}`,
    );
    return figures;
  } finally {
    clients.send({ type: "close" });
    await Promise.race([
      new Promise((r) => clients.once("exit", r)),
      new Promise((r) => setTimeout(r, 5000)),
    ]);
    if (clients.exitCode === null) clients.kill("SIGKILL");
    children.delete(clients);
    await stop(server.child);
  }
}

const f = (x: number, digits = 2) => (Number.isFinite(x) ? x.toFixed(digits) : "n/a");

async function main() {
  const admin = postgres(adminUrl, { max: 1, onnotice: () => {} });
  const dbName = `bench_send_${Date.now()}_${randomBytes(3).toString("hex")}`;
  const url = new URL(adminUrl);
  url.pathname = `/${dbName}`;
  await admin.unsafe(`create database "${dbName}"`);
  if (args["synchronous-commit"] === "off") {
    // This database only (a setting of the bench's own database, not of the server).
    await admin.unsafe(`alter database "${dbName}" set synchronous_commit = off`);
  }
  const keys = generateKeyPairSync("rsa", {
    modulusLength: 2048,
    publicKeyEncoding: { type: "spki", format: "pem" },
    privateKeyEncoding: { type: "pkcs8", format: "pem" },
  });
  if (args.profile) await mkdir(args.profile, { recursive: true });
  try {
    await runMigrations(url.toString());
    console.error(
      `${USERS} users × ${DEVICES} devices, ${CHATS} chats each, ${IDLE} idle; synchronous_commit ${args["synchronous-commit"]}; ${WARMUP} warm-up + ${MESSAGES} messages at ${RATE}/s; ${RUNS} runs; load ${os
        .loadavg()
        .map((l) => l.toFixed(1))
        .join(" ")}`,
    );
    const targets: Target[] = [
      "product",
      ...(args["ref-tree"] ? (["ref"] as const) : []),
      ...(args["skip-bare"] ? [] : (["bare"] as const)),
    ];
    const rows: Partial<Record<Target, Figures>>[] = [];
    for (let r = 1; r <= RUNS; r++) {
      // The order rotates by run, so that no target always runs first (or last).
      const order = targets.map((_, i) => targets[(i + r - 1) % targets.length] as Target);
      const got: Partial<Record<Target, Figures>> = {};
      for (const t of order) got[t] = await measure(t, url.toString(), keys, r);
      rows.push(got);
    }
    const name = (t: Target) => (t === "ref" ? `ref (${args["ref-tree"]})` : t);
    const cpu = (row: Partial<Record<Target, Figures>>, t: Target) =>
      row[t]?.cpuUsPerMsg ?? Number.NaN;
    console.log(`\nserver CPU µs per acked message (${targets.map(name).join(" / ")}):`);
    console.log(
      `| Run | ${targets.map(name).join(" / ")} | ${targets
        .slice(1)
        .map((t) => `product ÷ ${t}`)
        .join(" | ")} | server p50 / p99 ms | msgs/commit | syscw/msg | complete |`,
    );
    console.log(`| --- | --- | ${targets.map(() => "---").join(" | ")} | --- | --- | --- |`);
    rows.forEach((row, i) => {
      const p = row.product as Figures;
      console.log(
        `| ${i + 1} | ${targets.map((t) => f(cpu(row, t), 0)).join(" / ")} | ${targets
          .slice(1)
          .map((t) => `${f(cpu(row, "product") / cpu(row, t))}×`)
          .join(" | ")} | ${f(p.serverP50)} / ${f(p.serverP99)} | ${f(p.perCommit, 1)} | ${targets
          .map((t) => f(row[t]?.syscwPerMsg ?? Number.NaN))
          .join(" / ")} | ${targets.every((t) => row[t]?.complete) ? "yes" : "no"} |`,
      );
    });
    const med = (t: Target, k: keyof Figures) => median(rows.map((r) => Number(r[t]?.[k])));
    console.log(
      `\nmedians: ${targets.map((t) => `${name(t)} ${f(med(t, "cpuUsPerMsg"), 0)} µs/msg`).join(", ")}; ${targets
        .slice(1)
        .map(
          (t) =>
            `product ÷ ${t} (median of the runs' ratios) ${f(
              median(rows.map((r) => cpu(r, "product") / cpu(r, t))),
            )}×`,
        )
        .join(", ")}; product server-side p50 / p99 ${f(med("product", "serverP50"))} / ${f(
        med("product", "serverP99"),
      )} ms; load ${os
        .loadavg()
        .map((l) => l.toFixed(1))
        .join(" ")}`,
    );
  } finally {
    for (const c of children) if (c.exitCode === null) c.kill("SIGKILL");
    await admin.unsafe(`drop database if exists "${dbName}" with (force)`);
    await admin.end({ timeout: 5 });
  }
}

main().catch((err) => {
  console.error(err);
  for (const c of children) if (c.exitCode === null) c.kill("SIGKILL");
  process.exit(1);
});

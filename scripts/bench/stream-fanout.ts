/**
 * `npm run bench:stream -- [--chunks 500] [--rate 150] [--devices 4] [--rounds 3]`
 *
 * What coalescing streamed replies' deltas saves (docs/benchmarks.md, "Streamed replies"): a
 * backend streams a reply of `--chunks` chunks (one model token each) at `--rate` chunks/s
 * through the service API, one HTTP call per chunk, into a chat open on `--devices` devices of
 * the user. Measured per run, on a fresh server process (scripts/bench/stream-node.ts) whose
 * CPU time is the server's alone:
 *
 * - `message:delta` events each device received (and that the text is whole and identical);
 * - the server's CPU time (user + system) from the first chunk until every device has the
 *   whole text;
 * - stop latency: a second reply, stopped from device A (`message:stop`) mid-stream: time until
 *   device B gets `message:stopped`, until the server's AppEvents.stopRequested is called, and
 *   until A's ack.
 *
 * STREAM_FLUSH_MS 0 (one delta per chunk) and the default 40 ms alternate run by run, so that a
 * noisy machine hits both alike; medians of the rounds are printed at the end. Loopback only:
 * the database is a fresh one on the local Postgres (TEST_DATABASE_URL or --database-url),
 * dropped at the end; every loop is bounded in count and time.
 */
import { type ChildProcess, fork } from "node:child_process";
import { randomBytes } from "node:crypto";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import postgres from "postgres";
import { io, type Socket } from "socket.io-client";
import type {
  Ack,
  ClientToServerEvents,
  CommandResults,
  MessageDelta,
  ServerToClientEvents,
} from "../../protocol/index.js";
import { runMigrations } from "../../server/src/db/migrate.js";
import { median, nowMs, round } from "../loadtest/stats.js";
import { loopbackDatabaseUrl } from "./loopback.js";

const { values: args } = parseArgs({
  options: {
    chunks: { type: "string", default: "500" },
    rate: { type: "string", default: "150" },
    devices: { type: "string", default: "4" },
    rounds: { type: "string", default: "3" },
    "database-url": { type: "string" },
  },
});
const CHUNKS = Math.min(5000, Math.max(10, Number(args.chunks)));
const RATE = Math.min(2000, Math.max(1, Number(args.rate)));
const DEVICES = Math.min(50, Math.max(2, Number(args.devices)));
const ROUNDS = Math.min(9, Math.max(1, Number(args.rounds)));
const MODES = [0, 40] as const;
const adminUrl = loopbackDatabaseUrl(args["database-url"]);

type Client = Socket<ServerToClientEvents, ClientToServerEvents>;
type Ready = { type: "ready"; port: number; token: string; userId: string; serviceKey: string };
interface Result {
  flushMs: number;
  deltasPerDevice: number;
  cpuMs: number;
  streamMs: number;
  stopToDeviceMs: number;
  stopToBackendMs: number;
  stopAckMs: number;
}

const nodeScript = fileURLToPath(new URL("./stream-node.ts", import.meta.url));

function waitFor<T>(child: ChildProcess, type: string, timeoutMs = 20_000): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.off("message", on);
      reject(new Error(`no ${type} from the server process within ${timeoutMs} ms`));
    }, timeoutMs);
    const on = (m: { type: string }) => {
      if (m.type !== type) return;
      clearTimeout(timer);
      child.off("message", on);
      resolve(m as T);
    };
    child.on("message", on);
  });
}

async function cpuMs(child: ChildProcess): Promise<number> {
  const reply = waitFor<{ usage: NodeJS.CpuUsage }>(child, "cpu");
  child.send({ type: "cpu" });
  const { usage } = await reply;
  return (usage.user + usage.system) / 1000;
}

async function command<C extends keyof CommandResults>(
  s: Client,
  name: C,
  payload: unknown,
): Promise<CommandResults[C]> {
  const ack = (await (s as unknown as Socket).timeout(10_000).emitWithAck(name, payload)) as Ack<
    CommandResults[C]
  >;
  if (!ack.ok) throw new Error(`${name}: ${JSON.stringify(ack.error)}`);
  return ack.data;
}

/** Text placed by offset, as a device does. */
function place(text: string, d: MessageDelta): string {
  if (d.offset > text.length) throw new Error(`a hole before offset ${d.offset}`);
  return d.offset + d.delta.length <= text.length
    ? text
    : text + d.delta.slice(text.length - d.offset);
}

async function until(check: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

async function run(databaseUrl: string, flushMs: number): Promise<Result> {
  const child = fork(nodeScript, [], {
    execArgv: ["--import", "tsx"],
    env: { ...process.env, BENCH_DATABASE_URL: databaseUrl, STREAM_FLUSH_MS: String(flushMs) },
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  const devices: Client[] = [];
  try {
    const ready = await waitFor<Ready>(child, "ready");
    const base = `http://127.0.0.1:${ready.port}`;
    const api = async (path: string, body: unknown) => {
      const res = await fetch(`${base}/service/v1${path}`, {
        method: "POST",
        headers: {
          authorization: `Bearer ${ready.serviceKey}`,
          "content-type": "application/json",
        },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(10_000),
      });
      const json = (await res.json()) as Record<string, unknown>;
      return { status: res.status, json };
    };
    for (let i = 0; i < DEVICES; i++) {
      const s: Client = io(base, {
        transports: ["websocket"],
        reconnection: false,
        forceNew: true,
        auth: { token: ready.token },
      });
      await new Promise<void>((resolve, reject) => {
        s.once("connect", resolve);
        s.once("connect_error", reject);
      });
      devices.push(s);
    }
    const first = devices[0] as Client;
    const { chat } = await command(first, "chat:create", { title: "bench" });
    for (const d of devices) await command(d, "chat:open", { chatId: chat.id });

    // 1. One reply, streamed at RATE chunks/s.
    const texts = devices.map(() => "");
    const counts = devices.map(() => 0);
    let streamId = "";
    devices.forEach((d, i) => {
      d.on("message:delta", (delta) => {
        if (delta.streamId !== streamId) return;
        counts[i] = (counts[i] ?? 0) + 1;
        texts[i] = place(texts[i] ?? "", delta);
      });
    });
    const started = await api(`/users/${ready.userId}/chats/${chat.id}/streams`, {});
    streamId = (started.json.stream as { streamId: string }).streamId;
    const words = Array.from({ length: CHUNKS }, (_, i) => `tok${i} `);
    const expected = words.join("");
    const cpu0 = await cpuMs(child);
    const t0 = nowMs();
    for (const [index, delta] of words.entries()) {
      const due = t0 + (index * 1000) / RATE;
      const wait = due - nowMs();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      const r = await api(`/streams/${streamId}/chunks`, { index, delta });
      if (r.status !== 200) throw new Error(`chunk ${index}: ${r.status}`);
    }
    await until(() => texts.every((t) => t === expected), 30_000, "every device's text");
    const streamMs = nowMs() - t0;
    const cpu = (await cpuMs(child)) - cpu0;
    if ((await api(`/streams/${streamId}/finish`, {})).status !== 201) throw new Error("finish");

    // 2. Stop latency: a second reply stopped from device A mid-stream.
    const second = await api(`/users/${ready.userId}/chats/${chat.id}/streams`, {});
    const stopId = (second.json.stream as { streamId: string }).streamId;
    for (let index = 0; index < 20; index++) {
      await api(`/streams/${stopId}/chunks`, { index, delta: `w${index} ` });
    }
    const b = devices[1] as Client;
    const seenOnB = new Promise<number>((resolve) => {
      b.on("message:stopped", (e) => {
        if (e.streamId === stopId) resolve(nowMs());
      });
    });
    const told = waitFor<{ at: number }>(child, "stopRequested");
    const tStopWall = Date.now();
    const tStop = nowMs();
    const ack = await command(first, "message:stop", { chatId: chat.id, streamId: stopId });
    const tAck = nowMs();
    if (ack.status !== "stopped") throw new Error(`stop: ${ack.status}`);
    const tB = await seenOnB;
    const toldAt = (await told).at;
    return {
      flushMs,
      deltasPerDevice: counts.reduce((a, n) => a + n, 0) / counts.length,
      cpuMs: cpu,
      streamMs,
      stopToDeviceMs: tB - tStop,
      stopToBackendMs: toldAt - tStopWall,
      stopAckMs: tAck - tStop,
    };
  } finally {
    for (const d of devices) d.disconnect();
    const exited = new Promise((r) => child.once("exit", r));
    child.send({ type: "close" });
    await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
    if (child.exitCode === null) child.kill("SIGKILL");
  }
}

async function main() {
  const admin = postgres(adminUrl, { max: 1, onnotice: () => {} });
  const dbName = `bench_stream_${Date.now()}_${randomBytes(3).toString("hex")}`;
  const url = new URL(adminUrl);
  url.pathname = `/${dbName}`;
  await admin.unsafe(`create database "${dbName}"`);
  try {
    await runMigrations(url.toString());
    console.log(
      `${CHUNKS} chunks at ${RATE}/s to ${DEVICES} devices, ${ROUNDS} rounds, STREAM_FLUSH_MS ${MODES.join(" vs ")}`,
    );
    const results: Result[] = [];
    for (let r = 1; r <= ROUNDS; r++) {
      for (const flushMs of MODES) {
        const res = await run(url.toString(), flushMs);
        results.push(res);
        console.log(
          `round ${r} flush ${flushMs} ms: ${res.deltasPerDevice} deltas/device, server CPU ${round(res.cpuMs, 0)} ms over ${round(res.streamMs, 0)} ms; stop -> device B ${round(res.stopToDeviceMs, 1)} ms, -> stopRequested ${round(res.stopToBackendMs, 1)} ms, ack ${round(res.stopAckMs, 1)} ms`,
        );
      }
    }
    console.log("\nmedians:");
    for (const flushMs of MODES) {
      const mine = results.filter((x) => x.flushMs === flushMs);
      const m = (k: keyof Result) => round(median(mine.map((x) => x[k])), 1);
      console.log(
        `flush ${flushMs} ms: ${m("deltasPerDevice")} deltas/device (${round((m("deltasPerDevice") * DEVICES) / (m("streamMs") / 1000), 0)} events/s sent), server CPU ${m("cpuMs")} ms; stop -> device B ${m("stopToDeviceMs")} ms, -> stopRequested ${m("stopToBackendMs")} ms, ack ${m("stopAckMs")} ms`,
      );
    }
  } finally {
    await admin.unsafe(`drop database if exists "${dbName}" with (force)`);
    await admin.end({ timeout: 5 });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});

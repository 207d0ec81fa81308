/**
 * `npm run bench:adapter -- [--nodes 6] [--users 300] [--broadcasts 3000] [--rounds 3]`
 *
 * What the sharded adapter saves against the classic one (docs/benchmarks.md, "Adapter
 * fan-out"): `--nodes` Socket.IO nodes (scripts/bench/adapter-node.ts, a process each, on the
 * product's adapter code) share a private redis-server started on a free loopback port. Each
 * of `--users` users has two devices, on two different nodes (the rest of the nodes have none
 * of that user's sockets). `--broadcasts` broadcasts go to users' rooms (`io.to("user:<id>")`,
 * as chat:created/updated do), each from a random node (where the command or service call
 * landed), paced in batches. Measured per run:
 *
 * - adapter messages each node's subscriber received, per broadcast (mean over the nodes, and
 *   the busiest node);
 * - the nodes' CPU time (user + system, summed) per delivered message, from the first
 *   broadcast until every device received every broadcast for it;
 * - redis-server's CPU time over the same interval (INFO used_cpu_user + used_cpu_sys).
 *
 * Classic and sharded alternate run by run so a noisy machine hits both alike; medians of the
 * rounds and their ratios are printed at the end. Loopback only; every loop is bounded.
 */
import { type ChildProcess, fork } from "node:child_process";
import { randomBytes } from "node:crypto";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { Redis } from "ioredis";
import { io, type Socket } from "socket.io-client";
import { freePort, RedisProcess } from "../../tests/helpers/redis-process.js";
import { median } from "../loadtest/stats.js";

const { values: args } = parseArgs({
  options: {
    nodes: { type: "string", default: "6" },
    users: { type: "string", default: "300" },
    broadcasts: { type: "string", default: "3000" },
    rounds: { type: "string", default: "3" },
    batch: { type: "string", default: "100" },
  },
});
const NODES = Number(args.nodes);
const USERS = Number(args.users);
const BROADCASTS = Number(args.broadcasts);
const ROUNDS = Number(args.rounds);
const BATCH = Number(args.batch);
const NODE_SCRIPT = fileURLToPath(new URL("./adapter-node.ts", import.meta.url));

interface Node {
  child: ChildProcess;
  port: number;
  request<T>(msg: object, reply: string): Promise<T>;
}

function startNode(redisUrl: string, kind: string, prefix: string): Promise<Node> {
  const child = fork(NODE_SCRIPT, [redisUrl, kind, prefix], {
    execArgv: ["--import", "tsx"],
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  const request = <T>(msg: object, reply: string) =>
    new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`node: no ${reply} in 30 s`)), 30_000);
      const on = (m: { type: string }) => {
        if (m.type !== reply) return;
        clearTimeout(timer);
        child.off("message", on);
        resolve(m as T);
      };
      child.on("message", on);
      child.send(msg);
    });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("node did not start in 30 s")), 30_000);
    child.once("message", (m: { type: string; port: number }) => {
      clearTimeout(timer);
      resolve({ child, port: m.port, request });
    });
  });
}

async function redisCpuMs(redis: Redis): Promise<number> {
  const info = await redis.info("cpu");
  const get = (k: string) => Number(new RegExp(`${k}:([\\d.]+)`).exec(info)?.[1] ?? 0);
  return (get("used_cpu_user") + get("used_cpu_sys")) * 1000;
}

interface RunResult {
  kind: string;
  inboundPerNodePerBroadcast: number;
  busiestNodePerBroadcast: number;
  nodeCpuUsPerDelivered: number;
  redisCpuUsPerBroadcast: number;
  deliveredPerSecond: number;
}

async function run(kind: string, redisUrl: string, redis: Redis): Promise<RunResult> {
  const prefix = `bench-${randomBytes(3).toString("hex")}`;
  const nodes = await Promise.all(
    Array.from({ length: NODES }, () => startNode(redisUrl, kind, prefix)),
  );
  const sockets: Socket[] = [];
  let delivered = 0;
  // Each user's two devices on two different nodes.
  const homes: number[][] = [];
  for (let u = 0; u < USERS; u++) {
    const a = u % NODES;
    const b = (a + 1 + (Math.floor(u / NODES) % (NODES - 1))) % NODES;
    homes.push([a, b]);
    for (const n of [a, b]) {
      const s = io(`http://127.0.0.1:${nodes[n]?.port}`, {
        transports: ["websocket"],
        auth: { user: `u${u}` },
        forceNew: true,
        reconnection: false,
      });
      s.on("ev", () => {
        delivered += 1;
      });
      sockets.push(s);
    }
  }
  await Promise.all(
    sockets.map(
      (s) =>
        new Promise<void>((resolve, reject) => {
          s.once("connect", () => resolve());
          s.once("connect_error", reject);
        }),
    ),
  );
  // Warm-up: one broadcast per user until every device got it (the subscriptions are live).
  const waitDelivered = async (n: number, what: string) => {
    const deadline = Date.now() + 60_000;
    while (delivered < n) {
      if (Date.now() > deadline) throw new Error(`${what}: ${delivered}/${n} delivered`);
      await new Promise((r) => setTimeout(r, 5));
    }
  };
  for (let attempt = 0; ; attempt++) {
    delivered = 0;
    await Promise.all(
      nodes.map((node, i) =>
        node.request(
          { type: "emit", rooms: homes.flatMap((_, u) => (u % NODES === i ? [`user:u${u}`] : [])) },
          "emitted",
        ),
      ),
    );
    try {
      await waitDelivered(USERS * 2, "warm-up");
      break;
    } catch (e) {
      if (attempt >= 5) throw e;
    }
  }
  delivered = 0;
  await Promise.all(nodes.map((n) => n.request({ type: "reset" }, "reset")));
  const redisBefore = await redisCpuMs(redis);
  const started = performance.now();
  const payload = { chat: { id: randomBytes(8).toString("hex"), title: "x".repeat(80) } };
  for (let sent = 0; sent < BROADCASTS; sent += BATCH) {
    const perNode: string[][] = nodes.map(() => []);
    for (let k = sent; k < Math.min(BROADCASTS, sent + BATCH); k++) {
      const user = Math.floor(Math.random() * USERS);
      perNode[Math.floor(Math.random() * NODES)]?.push(`user:u${user}`);
    }
    await Promise.all(
      nodes.map((n, i) => n.request({ type: "emit", rooms: perNode[i], payload }, "emitted")),
    );
    // Paced: the batch is delivered before the next goes out (no queue builds up anywhere).
    await waitDelivered(Math.min(BROADCASTS, sent + BATCH) * 2, "broadcasts");
  }
  const seconds = (performance.now() - started) / 1000;
  const redisAfter = await redisCpuMs(redis);
  const stats = await Promise.all(
    nodes.map((n) => n.request<{ inbound: number; cpuMs: number }>({ type: "stats" }, "stats")),
  );
  for (const s of sockets) s.disconnect();
  await Promise.all(
    nodes.map(
      (n) =>
        new Promise<void>((resolve) => {
          n.child.once("exit", () => resolve());
          n.child.send({ type: "close" });
        }),
    ),
  );
  const inbound = stats.map((s) => s.inbound);
  const cpu = stats.reduce((sum, s) => sum + s.cpuMs, 0);
  return {
    kind,
    inboundPerNodePerBroadcast: inbound.reduce((a, b) => a + b, 0) / NODES / BROADCASTS,
    busiestNodePerBroadcast: Math.max(...inbound) / BROADCASTS,
    nodeCpuUsPerDelivered: (cpu * 1000) / delivered,
    redisCpuUsPerBroadcast: ((redisAfter - redisBefore) * 1000) / BROADCASTS,
    deliveredPerSecond: delivered / seconds,
  };
}

const r3 = (x: number) => Math.round(x * 1000) / 1000;

async function main() {
  const server = new RedisProcess(await freePort());
  await server.start();
  const redis = new Redis(server.url);
  const results: RunResult[] = [];
  try {
    for (let round = 0; round < ROUNDS; round++) {
      for (const kind of round % 2 === 0 ? ["classic", "sharded"] : ["sharded", "classic"]) {
        const r = await run(kind, server.url, redis);
        results.push(r);
        console.log(
          JSON.stringify({
            round,
            ...Object.fromEntries(
              Object.entries(r).map(([k, v]) => [k, typeof v === "number" ? r3(v) : v]),
            ),
          }),
        );
      }
    }
  } finally {
    redis.disconnect();
    await server.kill();
  }
  const of = (kind: string, key: keyof RunResult) =>
    median(results.filter((r) => r.kind === kind).map((r) => r[key] as number));
  const keys = [
    "inboundPerNodePerBroadcast",
    "busiestNodePerBroadcast",
    "nodeCpuUsPerDelivered",
    "redisCpuUsPerBroadcast",
    "deliveredPerSecond",
  ] as const;
  console.log(`\nmedians of ${ROUNDS} (nodes ${NODES}, users ${USERS}, broadcasts ${BROADCASTS}):`);
  for (const k of keys) {
    const c = of("classic", k);
    const s = of("sharded", k);
    console.log(
      `${k.padEnd(28)} classic ${String(r3(c)).padStart(9)}  sharded ${String(r3(s)).padStart(9)}  sharded/classic ${r3(s / c)}`,
    );
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

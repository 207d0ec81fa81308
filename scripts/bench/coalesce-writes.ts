/**
 * `node --import tsx scripts/bench/coalesce-writes.ts [--sockets 200] [--rounds 300] [--trials 6]`
 *
 * Server CPU of coalesced writes (server/src/socket/coalesce-writes.ts) against Engine.IO's
 * one write per packet, without the database or the product around them: one Socket.IO server
 * in this process, `--sockets` real socket.io-client sockets in a child process. A round emits,
 * in one tick, what a message costs the connections of a user with four devices: three
 * packets to one socket (ack, `message:created`, `chat:updated`) and two to each of three
 * others, for every group of four sockets. Trials alternate coalesced and per-packet on the same
 * server (a flag read per flush), so both see the same machine; the server's CPU
 * (process.cpuUsage) per round is reported per trial and as medians, with the write system
 * calls of this process (/proc/self/io `syscw`). Bounded: rounds × trials, 60 s per trial.
 */
import { fork } from "node:child_process";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { parseArgs } from "node:util";
import { Server } from "socket.io";
import { io as connect } from "socket.io-client";
import { coalesceWrites } from "../../server/src/socket/coalesce-writes.js";
import { median } from "../loadtest/stats.js";

const { values } = parseArgs({
  options: {
    sockets: { type: "string", default: "200" },
    rounds: { type: "string", default: "300" },
    trials: { type: "string", default: "6" },
    child: { type: "boolean", default: false },
    url: { type: "string" },
  },
});
const sockets = Math.min(2000, Math.max(4, Number(values.sockets)));
const rounds = Math.min(10_000, Math.max(1, Number(values.rounds)));
const trials = Math.min(20, Math.max(2, Number(values.trials)));

if (values.child) {
  // The clients: connect, count what arrives, report the total when asked.
  let received = 0;
  const list = Array.from({ length: sockets }, () =>
    connect(values.url as string, { transports: ["websocket"], reconnection: false }),
  );
  for (const s of list) s.onAny(() => received++);
  let connected = 0;
  for (const s of list)
    s.once("connect", () => {
      if (++connected === sockets) process.send?.({ type: "ready" });
    });
  process.on("message", (m: { type: string }) => {
    if (m.type === "count") process.send?.({ type: "count", received });
    if (m.type === "exit") process.exit(0);
  });
} else {
  const http = createServer();
  const server = new Server(http, { transports: ["websocket"], serveClient: false });
  let coalesced = true;
  // Both modes on the same connections: the wrapper defers and corks only while `coalesced`.
  server.engine.on("connection", (conn: Parameters<typeof coalesceWrites>[0]) => {
    const plain = (conn as unknown as { flush: () => void }).flush.bind(conn);
    coalesceWrites(conn);
    const wrapped = (conn as unknown as { flush: () => void }).flush;
    (conn as unknown as { flush: () => void }).flush = () => (coalesced ? wrapped() : plain());
  });
  await new Promise<void>((r) => http.listen(0, "127.0.0.1", r));
  const url = `http://127.0.0.1:${(http.address() as AddressInfo).port}`;
  const child = fork(
    new URL(import.meta.url),
    ["--child", "--url", url, "--sockets", String(sockets)],
    {
      execArgv: ["--import", "tsx"],
    },
  );
  const ask = (type: string, expect: string) =>
    new Promise<{ received?: number }>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`child timed out on ${type}`)), 60_000);
      const on = (m: { type: string; received?: number }) => {
        if (m.type !== expect) return;
        clearTimeout(timer);
        child.off("message", on);
        resolve(m);
      };
      child.on("message", on);
      if (type !== "ready") child.send({ type });
    });
  await ask("ready", "ready");
  const all = [...server.of("/").sockets.values()];
  const payload = { message: { id: "x".repeat(36), content: "y".repeat(120), seq: 1 } };
  const syscw = () => Number(/^syscw: (\d+)$/m.exec(readFileSync("/proc/self/io", "utf8"))?.[1]);
  const results: { mode: string; cpuUsPerRound: number; writesPerRound: number }[] = [];
  let expected = 0;
  for (let t = 0; t < trials * 2; t++) {
    coalesced = t % 2 === 0;
    const cpu = process.cpuUsage();
    const writes = syscw();
    for (let r = 0; r < rounds; r++) {
      for (let i = 0; i + 3 < all.length; i += 4) {
        all[i]?.emit("ack", payload);
        for (let d = 0; d < 4; d++) all[i + d]?.emit("message:created", payload);
        for (let d = 0; d < 4; d++) all[i + d]?.emit("chat:updated", payload);
        expected += 9;
      }
      // Next round on a later turn of the event loop, as messages arrive.
      await new Promise((resolve) => setImmediate(resolve));
    }
    // Wait until every packet arrived (bounded by the child's 60 s).
    const deadline = Date.now() + 60_000;
    while (((await ask("count", "count")).received ?? 0) < expected && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const used = process.cpuUsage(cpu);
    results.push({
      mode: coalesced ? "coalesced" : "per-packet",
      cpuUsPerRound: Math.round((used.user + used.system) / rounds),
      writesPerRound: Math.round(((syscw() - writes) / rounds) * 10) / 10,
    });
  }
  console.log(
    `${sockets} sockets, ${rounds} rounds per trial, ${all.length / 4} users of 4 devices`,
  );
  for (const mode of ["coalesced", "per-packet"]) {
    const mine = results.filter((r) => r.mode === mode);
    console.log(
      `${mode.padEnd(11)} CPU µs per round: ${mine.map((r) => r.cpuUsPerRound).join(" / ")} → median ${median(mine.map((r) => r.cpuUsPerRound))}; write syscalls per round: median ${Math.round(median(mine.map((r) => r.writesPerRound)) * 10) / 10}`,
    );
  }
  child.send({ type: "exit" });
  server.close();
  process.exit(0);
}

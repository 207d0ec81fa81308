/**
 * A short smoke run of the load-test harness (npm run loadtest -- --preset smoke): it starts a
 * real node, drives real sockets (some idle, closed and reopened) from a worker process, runs both baselines, and writes its
 * figures. This checks that the harness works; it measures nothing (see docs/benchmarks.md).
 */
import { spawnSync } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, expect, test } from "vitest";

const dirs: string[] = [];
/** A smoke run takes ~15 s on an idle machine; on a loaded one several times that. */
const RUN_TIMEOUT_MS = 150_000;
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

test("the smoke preset runs end to end and reports every figure", {
  timeout: RUN_TIMEOUT_MS + 10_000,
}, async () => {
  const dir = await mkdtemp(path.join(tmpdir(), "loadtest-"));
  dirs.push(dir);
  const json = path.join(dir, "result.json");
  const r = spawnSync(
    process.execPath,
    ["--import", "tsx", "scripts/loadtest/run.ts", "--preset", "smoke", "--json", json],
    { encoding: "utf8", timeout: RUN_TIMEOUT_MS },
  );
  expect(r.status, r.stderr).toBe(0);
  expect(r.stdout).toContain("delivery complete: yes");
  const result = JSON.parse(await readFile(json, "utf8"));
  const { product, bare, databaseCeiling } = result;
  expect(result.params.idle).toBeGreaterThan(0);
  expect(product.sockets).toBe(result.params.users * result.params.devices + result.params.idle);
  expect(product.handshakesPerSecond).toBeGreaterThan(0);
  expect(product.reconnectsPerSecond).toBeGreaterThan(0);
  // Other presets' idle sockets are socket.io-client instances; the generator's CPU is counted.
  expect(product.handshakeClient).toBe("socket.io");
  expect(product.generatorCpuUsPerHandshake).toBeGreaterThan(0);
  expect(product.generatorCpuUsPerReconnect).toBeGreaterThan(0);
  expect(product.offered.acked).toBeGreaterThan(0);
  expect(product.offered.ack.count).toBe(product.offered.acked);
  expect(product.offered.delivery.count).toBeGreaterThan(0);
  expect(product.completeness.delivered).toBe(product.completeness.expected);
  expect(product.completeness.duplicates).toBe(0);
  expect(product.saturatedPerSecond).toBeGreaterThan(0);
  expect(product.errors).toEqual({});
  // The server's own figures, read from its /metrics and /proc: the send→ack histogram counted
  // every send of the offered phase, and the per-message costs are measured, not absent.
  const o = product.offered;
  expect(o.serverAck.count).toBeGreaterThanOrEqual(o.acked);
  expect(o.serverAck.p50).toBeGreaterThan(0);
  expect(o.serverAck.p99).toBeGreaterThanOrEqual(o.serverAck.p50);
  expect(o.cpuUsPerMessage).toBeGreaterThan(0);
  expect(o.writeSyscallsPerMessage).toBeGreaterThan(0);
  expect(o.writeBytesPerMessage).toBeGreaterThan(0);
  // Each message is broadcast to its chat's room and its user's room, at least.
  expect(o.broadcastsPerMessage).toBeGreaterThanOrEqual(2);
  // One node, in-memory adapter: nothing arrives from Redis, and Redis' CPU is not read.
  expect(o.adapterReceivedPerBroadcast).toEqual([0]);
  expect(o.redisCpuPercent).toBeNull(); // NaN in JSON
  expect(bare.offered.cpuUsPerMessage).toBeGreaterThan(0);
  expect(bare.offered.writeSyscallsPerMessage).toBeGreaterThan(0);
  expect(bare.sockets).toBe(product.sockets);
  expect(databaseCeiling.perSecond).toBeGreaterThan(0);
});

test("--variant runs the product once per configuration, side by side, on nodes of its own", {
  timeout: RUN_TIMEOUT_MS + 10_000,
}, async () => {
  const dir = await mkdtemp(path.join(tmpdir(), "loadtest-"));
  dirs.push(dir);
  const json = path.join(dir, "result.json");
  const r = spawnSync(
    process.execPath,
    [
      "--import",
      "tsx",
      "scripts/loadtest/run.ts",
      "--preset",
      "smoke",
      "--idle",
      "0",
      "--skip-baselines",
      "--variant",
      "coalesced:SOCKET_COALESCE_WRITES=true",
      "--variant",
      "per-packet:SOCKET_COALESCE_WRITES=false",
      "--json",
      json,
    ],
    { encoding: "utf8", timeout: RUN_TIMEOUT_MS },
  );
  expect(r.status, r.stderr).toBe(0);
  expect(r.stdout).toMatch(/^figure\s+coalesced\s+per-packet\s+baseline\s+ratio to coalesced/m);
  expect(r.stdout).toContain("delivery complete: yes");
  const { variants } = JSON.parse(await readFile(json, "utf8"));
  expect(Object.keys(variants)).toEqual(["coalesced", "per-packet"]);
  expect(variants["per-packet"].env).toEqual({ SOCKET_COALESCE_WRITES: "false" });
  const coalesced = variants.coalesced.result.offered;
  const perPacket = variants["per-packet"].result.offered;
  for (const o of [coalesced, perPacket]) {
    expect(o.acked).toBeGreaterThan(0);
    expect(o.serverAck.count).toBeGreaterThanOrEqual(o.acked);
    expect(o.writeSyscallsPerMessage).toBeGreaterThan(0);
  }
  // Which variant takes fewer system calls is a measurement (docs/benchmarks.md,
  // `npm run bench:writes`), not something a smoke run on a busy machine can tell; the writes
  // themselves are counted exactly in tests/realtime/coalesced-writes.test.ts.
});

/** Runs the harness with `args` and returns its exit, its stdout and the JSON it wrote. */
async function runHarness(args: string[]) {
  const dir = await mkdtemp(path.join(tmpdir(), "loadtest-"));
  dirs.push(dir);
  const json = path.join(dir, "result.json");
  const r = spawnSync(
    process.execPath,
    ["--import", "tsx", "scripts/loadtest/run.ts", ...args, "--json", json],
    { encoding: "utf8", timeout: RUN_TIMEOUT_MS },
  );
  expect(r.status, r.stderr).toBe(0);
  return { stdout: r.stdout, result: JSON.parse(await readFile(json, "utf8")) };
}

test("the handshakes preset connects with the raw client and reports the generator's CPU", {
  timeout: RUN_TIMEOUT_MS + 10_000,
}, async () => {
  const { stdout, result } = await runHarness([
    "--preset",
    "handshakes",
    "--runs",
    "1",
    "--idle",
    "30",
  ]);
  const [round] = result.rounds;
  expect(result.rounds).toHaveLength(1);
  for (const side of [round.product, round.bare]) {
    // Every socket connected, against the product's token checks too: the raw client's
    // CONNECT carried a token the product verified.
    expect(side.sockets).toBe(30);
    expect(side.errors).toEqual({});
    expect(side.handshakeClient).toBe("raw");
    expect(side.handshakesPerSecond).toBeGreaterThan(0);
    expect(side.reconnectsPerSecond).toBeGreaterThan(0);
    expect(side.handshakeCpuUs).toBeGreaterThan(0);
    // The load generator's own CPU and the server's share of a core while connecting.
    expect(side.generatorCpuUsPerHandshake).toBeGreaterThan(0);
    expect(side.generatorCpuUsPerReconnect).toBeGreaterThan(0);
    expect(typeof side.handshakeServerCpuPercent).toBe("number");
    expect(typeof side.handshakeMachineBusyPercent).toBe("number");
  }
  expect(stdout).toMatch(/^generator CPU µs per first handshake/m);
  expect(stdout).toMatch(/^server CPU while connecting, % core/m);
  expect(stdout).toMatch(/^handshake client: raw; load average: /m);
});

test("the cluster preset runs the classic and the sharded adapter side by side", {
  timeout: RUN_TIMEOUT_MS + 10_000,
}, async () => {
  const { stdout, result } = await runHarness([
    "--preset",
    "cluster",
    "--users",
    "6",
    "--devices",
    "2",
    "--idle",
    "0",
    "--rate",
    "30",
    "--duration",
    "2",
    "--saturate",
    "1",
    "--skip-baselines",
  ]);
  expect(stdout).toMatch(/^figure\s+classic\s+sharded\s+baseline\s+ratio to classic/m);
  expect(stdout).toContain("delivery complete: yes");
  expect(stdout).toMatch(/^adapter msgs in per broadcast, per node/m);
  expect(stdout).toMatch(/^Redis CPU % of a core \/ µs per message/m);
  expect(stdout).toMatch(/^server-side send→ack p50\/p99 ms/m);
  const { variants } = result;
  expect(Object.keys(variants)).toEqual(["classic", "sharded"]);
  expect(variants.classic.env).toEqual({ REDIS_ADAPTER: "classic" });
  expect(variants.sharded.env).toEqual({ REDIS_ADAPTER: "sharded" });
  for (const name of ["classic", "sharded"]) {
    const o = variants[name].result.offered;
    expect(o.acked).toBeGreaterThan(0);
    // The report's per-message figures are there (their values are measurements).
    expect(o.serverAck.count).toBeGreaterThanOrEqual(o.acked);
    expect(o.adapterReceivedPerBroadcast).toHaveLength(3);
    for (const n of o.adapterReceivedPerBroadcast) expect(typeof n).toBe("number");
    expect(typeof o.redisCpuPercent).toBe("number");
    expect(typeof o.redisCpuUsPerMessage).toBe("number");
  }
});

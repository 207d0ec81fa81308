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
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

test("the smoke preset runs end to end and reports every figure", async () => {
  const dir = await mkdtemp(path.join(tmpdir(), "loadtest-"));
  dirs.push(dir);
  const json = path.join(dir, "result.json");
  const r = spawnSync(
    process.execPath,
    ["--import", "tsx", "scripts/loadtest/run.ts", "--preset", "smoke", "--json", json],
    { encoding: "utf8", timeout: 90_000 },
  );
  expect(r.status, r.stderr).toBe(0);
  expect(r.stdout).toContain("delivery complete: yes");
  const result = JSON.parse(await readFile(json, "utf8"));
  const { product, bare, databaseCeiling } = result;
  expect(result.params.idle).toBeGreaterThan(0);
  expect(product.sockets).toBe(result.params.users * result.params.devices + result.params.idle);
  expect(product.handshakesPerSecond).toBeGreaterThan(0);
  expect(product.reconnectsPerSecond).toBeGreaterThan(0);
  expect(product.offered.acked).toBeGreaterThan(0);
  expect(product.offered.ack.count).toBe(product.offered.acked);
  expect(product.offered.delivery.count).toBeGreaterThan(0);
  expect(product.completeness.delivered).toBe(product.completeness.expected);
  expect(product.completeness.duplicates).toBe(0);
  expect(product.saturatedPerSecond).toBeGreaterThan(0);
  expect(product.errors).toEqual({});
  expect(bare.sockets).toBe(product.sockets);
  expect(databaseCeiling.perSecond).toBeGreaterThan(0);
});

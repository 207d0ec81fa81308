/**
 * A short seeded chaos run (scripts/chaos/harness.ts, docs/chaos.md): three production nodes
 * over a private Redis, SDK devices, node and Redis SIGKILLs and connection purges. Once the
 * faults stop, every live device must equal the database with no reconnect forced, and every
 * acked message must be stored exactly once with `seq` gap-free. `npm run chaos -- --seed N
 * --duration S` runs longer ones.
 */
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { runChaos } from "../../scripts/chaos/harness.js";
import { adminUrl, createTestDatabase, type TestDatabase } from "../helpers/db.js";

/** The seed of `npm test`; CHAOS_SEED overrides it (to replay a failure from a long run). */
const SEED = Number(process.env.CHAOS_SEED ?? 12);
const DURATION_MS = 15_000;

let tdb: TestDatabase;
beforeAll(async () => {
  tdb = await createTestDatabase();
});
afterAll(async () => {
  await tdb?.drop();
});

describe("chaos", () => {
  test(`seed ${SEED}: live devices converge on the database; nothing acked is lost or doubled`, async () => {
    const report = await runChaos({
      seed: SEED,
      durationMs: DURATION_MS,
      databaseUrl: tdb.url,
      adminUrl,
      settleTimeoutMs: 20_000,
    });
    console.log(
      `[chaos] seed ${SEED}: ${report.ok ? "PASS" : "FAIL"} in ${report.wallMs} ms; operations ${JSON.stringify(report.operations)}; faults ${JSON.stringify(report.faults)}; ${report.acked} acked; converged after ${report.convergedAfterMs ?? "never"} ms`,
    );
    if (!report.ok) {
      console.log(`[chaos] seed ${SEED}: ${report.problems.join("\n  ")}`);
      console.log(`[chaos] timeline:\n  ${report.timeline.join("\n  ")}`);
    }
    expect(report.problems, `seed ${SEED}: reproduce with CHAOS_SEED=${SEED}`).toEqual([]);
    // Every kind of fault ran, and real work was done under them.
    expect(report.faults["node SIGKILL"]).toBeGreaterThanOrEqual(1);
    expect(report.faults["Redis SIGKILL"]).toBeGreaterThanOrEqual(2);
    expect(report.faults.purge).toBeGreaterThanOrEqual(3);
    expect(report.acked).toBeGreaterThan(20);
  }, 150_000);
});

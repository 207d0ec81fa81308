/**
 * `npm run chaos -- --seed N --duration S [--nodes 3 --users 3 --devices 3]`: one seeded chaos
 * run (scripts/chaos/harness.ts, docs/chaos.md) in a fresh database of the test Postgres
 * (TEST_DATABASE_URL, default postgres://postgres@127.0.0.1:5432/postgres), dropped afterwards.
 * Exits 1 with the seed and the diff when a device or the data is wrong.
 */
import { randomBytes } from "node:crypto";
import { parseArgs } from "node:util";
import postgres from "postgres";
import { runMigrations } from "../../server/src/db/migrate.js";
import { runChaos } from "./harness.js";

const { values: args } = parseArgs({
  options: {
    seed: { type: "string" },
    duration: { type: "string", default: "60" },
    nodes: { type: "string", default: "3" },
    users: { type: "string", default: "3" },
    devices: { type: "string", default: "3" },
    "settle-timeout": { type: "string", default: "30" },
  },
});
const int = (name: string, value: string | undefined, lo: number, hi: number) => {
  const n = Number(value);
  if (!Number.isInteger(n) || n < lo || n > hi) {
    console.error(`--${name} must be an integer from ${lo} to ${hi} (got ${value})`);
    process.exit(2);
  }
  return n;
};
const seed =
  args.seed === undefined ? randomBytes(4).readUInt32BE() : int("seed", args.seed, 0, 2 ** 32 - 1);
// Bounded: at most an hour of faults, a few nodes and devices, on one machine.
const duration = int("duration", args.duration, 1, 3600);
const adminUrl = process.env.TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
const name = `chaos_${Math.floor(Date.now() / 1000)}_${randomBytes(4).toString("hex")}`;
const url = new URL(adminUrl);
url.pathname = `/${name}`;
const admin = postgres(adminUrl, { max: 1, onnotice: () => {} });
await admin.unsafe(`create database "${name}"`);
let ok = false;
try {
  await runMigrations(url.toString());
  console.log(`chaos: seed ${seed}, ${duration} s of faults, database ${name}`);
  const report = await runChaos({
    seed,
    durationMs: duration * 1000,
    databaseUrl: url.toString(),
    adminUrl,
    nodes: int("nodes", args.nodes, 2, 6),
    users: int("users", args.users, 1, 10),
    devicesPerUser: int("devices", args.devices, 1, 6),
    settleTimeoutMs: int("settle-timeout", args["settle-timeout"], 1, 600) * 1000,
    log: (line) => console.log(`  ${new Date().toISOString().slice(11, 23)} ${line}`),
  });
  ok = report.ok;
  console.log(
    `chaos seed ${seed}: ${report.ok ? "PASS" : "FAIL"} in ${(report.wallMs / 1000).toFixed(1)} s; ` +
      `operations ${JSON.stringify(report.operations)}; faults ${JSON.stringify(report.faults)}; ` +
      `${report.acked} acked; converged ${report.convergedAfterMs === null ? "never" : `${report.convergedAfterMs} ms`} after the faults`,
  );
  for (const p of report.problems) console.log(`  ${p}`);
  if (!ok) console.log(`timeline:\n  ${report.timeline.join("\n  ")}`);
  if (!ok) console.log(`reproduce: npm run chaos -- --seed ${seed} --duration ${duration}`);
} finally {
  await admin.unsafe(`drop database if exists "${name}" with (force)`);
  await admin.end();
}
process.exit(ok ? 0 : 1);

/**
 * Runs once per `vitest run`: checks that the test Postgres is reachable (failing loudly if
 * not), migrates a template database, and drops it again at the end.
 */
import { randomBytes } from "node:crypto";
import type { TestProject } from "vitest/node";
import { runMigrations } from "../../server/src/db/migrate.js";
import { adminSql, databaseUrl } from "./db.js";

declare module "vitest" {
  export interface ProvidedContext {
    templateDb: string;
  }
}

/** Databases of killed runs older than this are dropped at the next run. */
const STALE_SECONDS = 2 * 3600;

export default async function setup(project: TestProject) {
  const now = Math.floor(Date.now() / 1000);
  const name = `tmpl_${now}_${randomBytes(4).toString("hex")}`;
  const admin = adminSql();
  try {
    await admin`select 1`;
  } catch (e) {
    throw new Error(
      `The tests need a real Postgres at ${databaseUrl("postgres")} (set TEST_DATABASE_URL): ${e}`,
    );
  }
  // Leftovers of runs that were killed before their teardown.
  const ours = await admin<{ datname: string }[]>`
    select datname from pg_database where datname ~ '^(t|tmpl)_[0-9]+_[0-9a-f]+$'`;
  for (const { datname } of ours) {
    const created = Number(datname.split("_")[1]);
    if (now - created > STALE_SECONDS) {
      await admin.unsafe(`drop database if exists "${datname}" with (force)`).catch(() => {});
    }
  }
  await admin.unsafe(`create database "${name}"`);
  await admin.end();
  await runMigrations(databaseUrl(name));
  project.provide("templateDb", name);

  return async () => {
    const a = adminSql();
    await a.unsafe(`drop database if exists "${name}" with (force)`);
    await a.end();
  };
}

/**
 * Per-file test databases. The global setup migrates one template database per run; every
 * test file clones it (`CREATE DATABASE … TEMPLATE`), so files run in parallel without
 * sharing rows and without paying for the migrations again.
 *
 * Needs a real Postgres at TEST_DATABASE_URL (default: the local one on 127.0.0.1:5432).
 * If it is not reachable the suite fails; it never skips.
 */
import { randomBytes } from "node:crypto";
import postgres from "postgres";
import { inject } from "vitest";

/** Admin connection string: any database of the test cluster, used to create and drop others. */
export const adminUrl =
  process.env.TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";

export function databaseUrl(name: string): string {
  const u = new URL(adminUrl);
  u.pathname = `/${name}`;
  return u.toString();
}

export function adminSql(): postgres.Sql {
  return postgres(adminUrl, { max: 1, onnotice: () => {}, connect_timeout: 5 });
}

/** A fresh, migrated database for one test file. `drop()` removes it. */
export interface TestDatabase {
  name: string;
  url: string;
  drop(): Promise<void>;
}

export async function createTestDatabase(): Promise<TestDatabase> {
  const template = inject("templateDb");
  const name = `t_${Math.floor(Date.now() / 1000)}_${randomBytes(6).toString("hex")}`;
  const admin = adminSql();
  try {
    // Cloning needs the template to have no other session; retry briefly if another file is
    // cloning at the same moment.
    for (let attempt = 0; ; attempt++) {
      try {
        await admin.unsafe(`create database "${name}" template "${template}"`);
        break;
      } catch (e) {
        if (attempt >= 50 || !String(e).includes("is being accessed by other users")) throw e;
        await new Promise((r) => setTimeout(r, 50 + Math.random() * 100));
      }
    }
  } finally {
    await admin.end();
  }
  return {
    name,
    url: databaseUrl(name),
    async drop() {
      const a = adminSql();
      try {
        await a.unsafe(`drop database if exists "${name}" with (force)`);
      } finally {
        await a.end();
      }
    },
  };
}

/** A claims object for `request.jwt.claims`. */
export interface Claims {
  sub?: string;
  role: "authenticated" | "service_role";
  [k: string]: unknown;
}

/**
 * Runs `fn` in a transaction as the given API role with the given claims, the way Supabase's
 * PostgREST does: `SET LOCAL ROLE` plus `request.jwt.claims`. The transaction is rolled back
 * unless `commit` is true.
 */
export async function asRole<T>(
  sql: postgres.Sql,
  claims: Claims,
  fn: (tx: postgres.TransactionSql) => PromiseLike<T>,
  { commit = false }: { commit?: boolean } = {},
): Promise<T> {
  const rollback = Symbol("rollback");
  let result: T | undefined;
  try {
    await sql.begin(async (tx) => {
      await tx.unsafe(
        `set local role ${claims.role === "service_role" ? "service_role" : "authenticated"}`,
      );
      await tx`select set_config('request.jwt.claims', ${JSON.stringify(claims)}, true)`;
      result = await fn(tx);
      if (!commit) throw rollback;
    });
  } catch (e) {
    if (e !== rollback) throw e;
  }
  return result as T;
}

import { drizzle, type PostgresJsDatabase } from "drizzle-orm/postgres-js";
import postgres from "postgres";
import * as schema from "./schema.js";

/** The Drizzle database with this project's schema. */
export type Database = PostgresJsDatabase<typeof schema>;

/** A Postgres pool and the Drizzle database on top of it. `close()` ends the pool. */
export interface DatabaseHandle {
  db: Database;
  sql: postgres.Sql;
  close(): Promise<void>;
}

export interface DatabaseOptions {
  /** Maximum pooled connections. */
  max?: number;
  /** Seconds to wait for a connection before failing. */
  connectTimeoutSeconds?: number;
  /** Session settings of every connection (e.g. `synchronous_commit`). */
  settings?: Record<string, string>;
}

export function createDatabase(url: string, options: DatabaseOptions = {}): DatabaseHandle {
  const sql = postgres(url, {
    max: options.max ?? 10,
    connect_timeout: options.connectTimeoutSeconds ?? 5,
    onnotice: () => {},
    connection: { application_name: "chat-backend", ...options.settings },
  });
  const db = drizzle(sql, { schema });
  return { db, sql, close: () => sql.end({ timeout: 5 }) };
}

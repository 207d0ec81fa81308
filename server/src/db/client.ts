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

/** `application_name` of the server's connections (pg_stat_activity), so operators can find them. */
export const APPLICATION_NAME = "chat-backend";

export interface DatabaseOptions {
  /** Maximum pooled connections. */
  max?: number;
  /** Seconds to wait for a connection before failing. */
  connectTimeoutSeconds?: number;
  /** Session settings of every connection (e.g. `synchronous_commit`). */
  settings?: Record<string, string>;
  /**
   * Longest wait in seconds between reconnect attempts (default 1). postgres.js's own backoff
   * grows with the failed connection attempts of the whole pool, up to 20 s: after an outage of
   * a few seconds a pool could wait that long before trying again (tests/db/reconnect-backoff).
   */
  maxReconnectDelaySeconds?: number;
  /**
   * Drizzle's queries as prepared statements (default true; see `preparing` below). False only
   * to measure what that saves (`npm run bench:queries`).
   */
  prepareDrizzle?: boolean;
}

export function createDatabase(url: string, options: DatabaseOptions = {}): DatabaseHandle {
  const sql = postgres(url, {
    max: options.max ?? 10,
    connect_timeout: options.connectTimeoutSeconds ?? 5,
    onnotice: () => {},
    // Off: postgres.js would otherwise query pg_type for array types as the first statement of
    // every new connection, and an error there (the connection terminated by a failover, a
    // pooler restart or an idle reaper) escapes as an unhandled rejection that no caller can
    // catch (porsager/postgres#1192, #1205, #1223); until those types arrive it also sends
    // `sql.array()` parameters as text ("malformed array literal", #789). Nothing here needs
    // them: no query sends or returns an array parameter (insertMany sends one jsonb value).
    fetch_types: false,
    connection: { application_name: APPLICATION_NAME, ...options.settings },
    backoff: reconnectBackoff(options.maxReconnectDelaySeconds ?? 1),
  });
  const db = drizzle(options.prepareDrizzle === false ? sql : preparing(sql), { schema });
  return { db, sql, close: () => sql.end({ timeout: 5 }) };
}

/**
 * The pool as Drizzle should use it: every query with parameters as a prepared statement.
 * Drizzle runs its queries through `unsafe()` with `prepare: false` unless each is given a name
 * (`.prepare("…")`), and postgres.js then sends an unprepared query with parameters in two
 * round trips (Parse and Describe, wait for the parameter types, then Bind and Execute), parsed
 * again on every run. Prepared, a query costs that once per connection and one round trip
 * after (as the tagged-template queries do); `tests/db/prepared.test.ts` checks it. Statements
 * are keyed by their text, so every query here has a fixed shape (lists go as one jsonb value).
 */
function preparing(sql: postgres.Sql): postgres.Sql {
  const prepared = (target: postgres.Sql): postgres.Sql => {
    const unsafe = (query: string, args?: unknown, options?: postgres.UnsafeQueryOptions) =>
      Array.isArray(args) && args.length > 0
        ? target.unsafe(query, args as postgres.ParameterOrJSON<never>[], {
            ...options,
            prepare: true,
          })
        : target.unsafe(query, args as never, options);
    // A transaction's own scoped pool, prepared the same way.
    const begin = (...args: unknown[]) => {
      const fn = args.pop() as (tx: postgres.TransactionSql) => unknown;
      return (target.begin as (...a: unknown[]) => unknown)(
        ...args,
        (tx: postgres.TransactionSql) =>
          fn(prepared(tx as unknown as postgres.Sql) as unknown as postgres.TransactionSql),
      );
    };
    return new Proxy(target, {
      get: (t, key, receiver) =>
        key === "unsafe" ? unsafe : key === "begin" ? begin : Reflect.get(t, key, receiver),
    });
  };
  return prepared(sql);
}

/** postgres.js's own backoff (jittered, 3^retries / 100 s), capped at `maxSeconds`. */
function reconnectBackoff(maxSeconds: number): (retries: number) => number {
  return (retries) => (0.5 + Math.random() / 2) * Math.min(3 ** retries / 100, maxSeconds);
}

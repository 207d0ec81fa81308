import type postgres from "postgres";

/**
 * Runs a postgres.js read unless `signal` has already aborted (its command timed out, or its
 * socket is gone while it waited for its turn): then it is not sent at all and rejects with
 * 57014 (query_canceled, which maps to UNAVAILABLE).
 *
 * A read already sent is deliberately not cancelled in Postgres (`query.cancel()`): with
 * postgres.js 3.4.9 a query that fails while its rows stream in leaves the connection's row
 * counter behind, and the next query on that connection resolves with holes in its result
 * (porsager/postgres#1181, #1119: rows silently missing). A page is bounded (Limits.MAX_PAGE_BYTES),
 * so letting one finish costs little; a wrong answer would cost much more.
 */
export function unlessAborted<T extends readonly postgres.MaybeRow[]>(
  query: postgres.PendingQuery<T>,
  signal?: AbortSignal,
): Promise<T> {
  if (signal?.aborted) {
    return Promise.reject(
      Object.assign(new Error("read not started: nobody waits for it"), { code: "57014" }),
    );
  }
  return query;
}

/**
 * The rows of a raw result, without the holes postgres.js can leave at its start after an
 * earlier query on the same connection failed mid-stream (porsager/postgres#1181): the rows
 * themselves are all there, after the holes.
 */
export function compact<T>(rows: readonly T[]): T[] {
  return rows.filter((r) => r !== undefined);
}

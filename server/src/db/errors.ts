/**
 * Errors that mean "the database cannot be reached or is overloaded right now": the command
 * did not happen and may be retried. Everything else is a bug or bad data.
 */
const unavailableCodes = new Set([
  // postgres.js connection errors
  "CONNECT_TIMEOUT",
  "CONNECTION_CLOSED",
  "CONNECTION_ENDED",
  "CONNECTION_DESTROYED",
  // Node socket errors
  "ECONNREFUSED",
  "ECONNRESET",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  // Postgres: too many connections, shutting down, cannot connect now, statement timeout
  "53300",
  "57P01",
  "57P02",
  "57P03",
  "57014",
]);

/**
 * The Postgres or driver error code of `err`, looking through wrappers: drizzle-orm wraps
 * driver errors in a DrizzleQueryError whose `cause` carries the code.
 */
export function errorCode(err: unknown): string | undefined {
  for (let e = err, depth = 0; typeof e === "object" && e !== null && depth < 5; depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string") return code;
    e = (e as { cause?: unknown }).cause;
  }
  return undefined;
}

export function isUnavailable(err: unknown): boolean {
  const code = errorCode(err);
  if (code === undefined) return false;
  return unavailableCodes.has(code) || code.startsWith("08");
}

/** Postgres: a foreign key refused the row (e.g. its parent was deleted meanwhile). */
export const FOREIGN_KEY_VIOLATION = "23503";

/**
 * Errors after which a write may or may not have committed: the connection broke (or the
 * backend was terminated) while the statement was on its way or running, so the commit may have
 * happened with its answer lost. Not those that mean it never reached the database (refused,
 * connect timeout, too many connections).
 */
const outcomeUnknownCodes = new Set([
  "CONNECTION_CLOSED",
  "CONNECTION_ENDED",
  "CONNECTION_DESTROYED",
  "ECONNRESET",
  "EPIPE",
  "ETIMEDOUT",
  "57P01",
  "57P02",
  "57014",
]);

export function mayHaveCommitted(err: unknown): boolean {
  const code = errorCode(err);
  return code !== undefined && outcomeUnknownCodes.has(code);
}

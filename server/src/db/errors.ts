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

export function isUnavailable(err: unknown): boolean {
  if (typeof err !== "object" || err === null) return false;
  const code = (err as { code?: unknown }).code;
  if (typeof code !== "string") return false;
  return unavailableCodes.has(code) || code.startsWith("08");
}

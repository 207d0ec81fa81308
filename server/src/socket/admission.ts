/**
 * Admission of a connection, in two steps:
 * 1. at the WebSocket handshake (Engine.IO's `allowRequest`, before any Socket.IO code): the
 *    attempt is counted against its client address and its Origin is checked. Counting here,
 *    not at Socket.IO's CONNECT packet, means a WebSocket that never sends CONNECT counts too.
 *    The verdict is kept on the request;
 * 2. at Socket.IO's CONNECT (the first middleware): a refused verdict becomes a `connect_error`
 *    with a code (ORIGIN_NOT_ALLOWED, RATE_LIMITED with `retryAfterMs`), like every other
 *    refusal, and the connection is closed. Nothing after it runs: no token is verified and the
 *    database is not touched.
 *
 * A refused connection that never sends CONNECT is closed after REFUSED_DEADLINE_MS; any other
 * connection that does not complete authentication is closed after Socket.IO's `connectTimeout`
 * (CONNECT_TIMEOUT_MS).
 */
import type { IncomingMessage } from "node:http";
import type { ExtendedError } from "socket.io";
import { ConnectErrorCode } from "../../../protocol/constants.js";
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";
import type { RateLimits } from "../services/rate-limits.js";
import { refuseHandshake } from "./auth.middleware.js";
import { clientAddress } from "./client-address.js";
import type { ChatServer, ChatSocket } from "./types.js";

/**
 * Milliseconds a connection refused at the handshake may stay open waiting for the CONNECT that
 * its refusal answers. A client sends CONNECT as soon as the WebSocket opens; one that does not
 * is holding a socket it has no use for.
 */
export const REFUSED_DEADLINE_MS = 2000;

/** What the handshake decided about a connection. */
export type Verdict =
  | { admitted: true }
  | { admitted: false; code: typeof ConnectErrorCode.ORIGIN_NOT_ALLOWED }
  | { admitted: false; code: typeof ConnectErrorCode.RATE_LIMITED; retryAfterMs: number };

const VERDICT = Symbol("admission verdict");
type WithVerdict = IncomingMessage & { [VERDICT]?: Verdict };

export interface AdmissionDeps {
  rateLimits: RateLimits;
  /** The Origin check (see origins.ts): Origin header and Host header. */
  originAllowed: (origin: string | undefined, host: string | undefined) => boolean;
  /** Reverse proxies whose X-Forwarded-For entries are trusted (see client-address.ts). */
  trustProxy: number;
  metrics: Metrics;
  logger: Logger;
}

/**
 * Step 1, for `allowRequest`: counts the handshake against its address, checks its Origin and
 * keeps the verdict on `req`. Never refuses at the HTTP level (the refusal is step 2's, so that
 * the client learns why), and never rejects.
 */
export async function judgeHandshake(req: IncomingMessage, deps: AdmissionDeps): Promise<void> {
  const address = clientAddress(req, deps.trustProxy);
  let waitMs = 0;
  try {
    waitMs = await deps.rateLimits.consumeAddress(address);
  } catch (err) {
    // The limiter falls back to memory when Redis is down, so this is unexpected: let the
    // connection through (the per-user limits still apply) rather than refuse everyone.
    deps.logger.warn({ err }, "address limit unavailable");
  }
  let verdict: Verdict = { admitted: true };
  if (!deps.originAllowed(req.headers.origin, req.headers.host)) {
    verdict = { admitted: false, code: ConnectErrorCode.ORIGIN_NOT_ALLOWED };
  } else if (waitMs > 0) {
    verdict = { admitted: false, code: ConnectErrorCode.RATE_LIMITED, retryAfterMs: waitMs };
  }
  (req as WithVerdict)[VERDICT] = verdict;
  if (!verdict.admitted) deps.logger.debug({ address, code: verdict.code }, "handshake refused");
}

/**
 * Closes a connection refused at the handshake that has not sent its CONNECT within
 * REFUSED_DEADLINE_MS (one that does is refused and closed by the middleware at once).
 */
export function closeIdleRefused(io: ChatServer): void {
  io.engine.on("connection", (conn) => {
    const verdict = (conn.request as WithVerdict)[VERDICT];
    if (!verdict || verdict.admitted) return;
    const timer = setTimeout(() => conn.close(), REFUSED_DEADLINE_MS);
    timer.unref();
    conn.once("close", () => clearTimeout(timer));
  });
}

/** Step 2, the first Socket.IO middleware: turns a refused verdict into a `connect_error`. */
export function admissionMiddleware(deps: Pick<AdmissionDeps, "metrics">) {
  return (socket: ChatSocket, next: (err?: ExtendedError) => void) => {
    const verdict = (socket.request as WithVerdict)[VERDICT];
    // No verdict would mean a request that bypassed allowRequest: there is none, but refuse.
    if (!verdict?.admitted) {
      const code = verdict?.code ?? ConnectErrorCode.ORIGIN_NOT_ALLOWED;
      deps.metrics.handshakes.inc({ outcome: code });
      if (verdict?.code === ConnectErrorCode.RATE_LIMITED) {
        return refuseHandshake(
          socket,
          next,
          { code, retryAfterMs: verdict.retryAfterMs },
          `Too many connections from this address; retry in ${Math.ceil(verdict.retryAfterMs / 1000)} s`,
        );
      }
      return refuseHandshake(socket, next, { code }, "Origin not allowed");
    }
    next();
  };
}

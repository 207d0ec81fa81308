import type { ExtendedError } from "socket.io";
import { ConnectErrorCode } from "../../../protocol/constants.js";
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";
import type { RateLimits } from "../services/rate-limits.js";
import { refuseHandshake } from "./auth.middleware.js";
import { clientAddress } from "./client-address.js";
import type { ChatSocket } from "./types.js";

/**
 * Counts every connection attempt against its client address and refuses those past the
 * limit with `connect_error` RATE_LIMITED and `retryAfterMs`. Runs before the auth middleware,
 * so a flood of handshakes is refused before any token is verified or any row is written.
 */
export function addressLimitMiddleware(deps: {
  rateLimits: RateLimits;
  /** Reverse proxies whose X-Forwarded-For entries are trusted (see client-address.ts). */
  trustProxy: number;
  metrics: Metrics;
  logger: Logger;
}) {
  const { rateLimits, trustProxy, metrics, logger } = deps;
  return async (socket: ChatSocket, next: (err?: ExtendedError) => void) => {
    const address = clientAddress(socket.request, trustProxy);
    let waitMs = 0;
    try {
      waitMs = await rateLimits.consumeAddress(address);
    } catch (err) {
      // The limiter falls back to memory when Redis is down, so this is unexpected: let the
      // connection through (the per-user limits still apply) rather than refuse everyone.
      logger.warn({ err }, "address limit unavailable");
    }
    if (waitMs > 0) {
      metrics.handshakes.inc({ outcome: ConnectErrorCode.RATE_LIMITED });
      logger.debug({ address }, "handshake refused: too many connections from this address");
      return refuseHandshake(
        socket,
        next,
        { code: ConnectErrorCode.RATE_LIMITED, retryAfterMs: waitMs },
        `Too many connections from this address; retry in ${Math.ceil(waitMs / 1000)} s`,
      );
    }
    next();
  };
}

import type { ExtendedError } from "socket.io";
import { ConnectErrorCode } from "../../../protocol/constants.js";
import { TokenError, type TokenVerifier } from "../auth/token-verifier.js";
import { isUnavailable } from "../db/errors.js";
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";
import {
  SESSION_REVOKED_CLOSING,
  USER_DELETED_CLOSING,
} from "../services/clerk-webhook.service.js";
import type { RateLimits } from "../services/rate-limits.js";
import type { Revocations } from "../services/revocations.js";
import type { UserService } from "../services/user.service.js";
import type { ChatSocket } from "./types.js";

/** The token from `auth.token` in the handshake, or an `Authorization: Bearer` header. */
export function tokenFromHandshake(handshake: ChatSocket["handshake"]): string {
  const fromAuth = (handshake.auth as { token?: unknown } | undefined)?.token;
  if (typeof fromAuth === "string" && fromAuth) return fromAuth;
  const header = handshake.headers.authorization;
  const match = typeof header === "string" ? /^Bearer\s+(\S+)$/i.exec(header) : null;
  return match?.[1] ?? "";
}

/** What a refused handshake's `connect_error` carries in `data`. */
export interface RefusalData {
  code: ConnectErrorCode;
  /** For RATE_LIMITED: milliseconds until a new attempt may succeed. */
  retryAfterMs?: number;
}

function refuse(data: RefusalData, message: string): ExtendedError {
  const err = new Error(message) as ExtendedError;
  err.data = data;
  return err;
}

/**
 * Refuses a handshake: the client gets `connect_error` with `data`, then the connection is
 * closed. A well-behaved client closes it itself; a hostile one would otherwise keep the bare
 * connection (and retry on it) until the connect timeout (CONNECT_TIMEOUT_MS, 10 s) ends it.
 */
export function refuseHandshake(
  socket: ChatSocket,
  next: (err?: ExtendedError) => void,
  data: RefusalData,
  message: string,
): void {
  next(refuse(data, message));
  // The CONNECT_ERROR packet is written on the next tick; closing flushes it first.
  setImmediate(() => {
    if (!socket.connected) socket.conn.close();
  });
}

/**
 * Authenticates every connection once, at the handshake: verifies the Clerk token, creates the
 * user's row on first sight, and puts the user into `socket.data`. A refusal reaches the
 * client as `connect_error` with `data.code`.
 */
export function authMiddleware(deps: {
  verifier: TokenVerifier;
  users: UserService;
  rateLimits: RateLimits;
  revocations: Revocations;
  metrics: Metrics;
  logger: Logger;
}) {
  const { verifier, users, rateLimits, revocations, metrics, logger } = deps;
  return async (socket: ChatSocket, next: (err?: ExtendedError) => void) => {
    let reserved: string | undefined;
    const refuseWith = (code: ConnectErrorCode, message: string, retryAfterMs?: number) => {
      if (reserved) rateLimits.release(reserved, socket.id);
      metrics.handshakes.inc({ outcome: code });
      refuseHandshake(socket, next, retryAfterMs ? { code, retryAfterMs } : { code }, message);
    };
    try {
      const token = tokenFromHandshake(socket.handshake);
      const verified = await verifier.verify(token);
      const revoked = await revocations.revoked(verified.userId, verified.sessionId);
      if (revoked) {
        if (revoked === "user") users.forget(verified.userId);
        return refuseWith(
          ConnectErrorCode.TOKEN_INVALID,
          "The session was revoked or the user deleted",
        );
      }
      const waitMs = await rateLimits.acquireConnection(verified.userId, socket.id);
      if (waitMs > 0) {
        return refuseWith(
          ConnectErrorCode.RATE_LIMITED,
          `Too many connections for this user; retry in ${Math.ceil(waitMs / 1000)} s`,
          waitMs,
        );
      }
      reserved = verified.userId; // released on disconnect (app.ts) or refusal below
      const provisioned = await users.provisionUser(verified.userId);
      if (!provisioned) {
        // Deleted (a tombstone): the check above ran before the deletion, or on a node whose
        // revocation had expired. The row is not created again.
        return refuseWith(ConnectErrorCode.TOKEN_INVALID, "The user was deleted");
      }
      const { dbUserId, subscriptionTier } = provisioned;
      if (socket.conn.readyState !== "open") {
        // The client left mid-handshake: Socket.IO drops this socket without a "disconnect",
        // so the slot taken above would never be released.
        rateLimits.release(verified.userId, socket.id);
        metrics.handshakes.inc({ outcome: "abandoned" });
        return next(refuse({ code: ConnectErrorCode.UNAVAILABLE }, "Connection closed"));
      }
      socket.data = {
        userId: verified.userId,
        dbUserId,
        subscriptionTier,
        sessionId: verified.sessionId,
        tokenExpiresAt: verified.expiresAt,
      };
      metrics.handshakes.inc({ outcome: "ok" });
      next();
    } catch (e) {
      if (e instanceof TokenError) {
        logger.debug({ code: e.code }, "handshake refused");
        refuseWith(e.code, e.message);
      } else if (isUnavailable(e)) {
        logger.warn({ err: String(e) }, "handshake failed: database unavailable");
        refuseWith(ConnectErrorCode.UNAVAILABLE, "Service temporarily unavailable");
      } else {
        logger.error({ err: e }, "handshake failed");
        refuseWith(ConnectErrorCode.UNAVAILABLE, "Internal error");
      }
    }
  };
}

/**
 * Checks the revocations again once a new socket is in its user's and session's rooms, and
 * closes it if the user was deleted or the session revoked meanwhile. The handshake checks
 * before it provisions, and a deletion or revocation whose disconnect reached this node between
 * that check and the joins found the socket in no room and missed it. Every revocation is
 * recorded (this node's memory, Redis) before its disconnect is sent, so one of the two always
 * catches the socket. Commands it sends meanwhile find the user's row gone.
 */
export async function closeIfRevoked(
  socket: ChatSocket,
  deps: { revocations: Revocations; users: UserService; logger: Logger },
): Promise<void> {
  const kind = await deps.revocations.revoked(socket.data.userId, socket.data.sessionId);
  if (!kind || !socket.connected) return;
  if (kind === "user") deps.users.forget(socket.data.userId);
  deps.logger.info({ userId: socket.data.userId, kind }, "revoked while connecting: closed");
  socket.emit(
    "connection:closing",
    kind === "user" ? USER_DELETED_CLOSING : SESSION_REVOKED_CLOSING,
  );
  socket.disconnect(true);
}

import type { ExtendedError } from "socket.io";
import { ConnectErrorCode } from "../../../protocol/constants.js";
import { TokenError, type TokenVerifier } from "../auth/token-verifier.js";
import { isUnavailable } from "../db/errors.js";
import type { Logger } from "../logger.js";
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

function refuse(code: ConnectErrorCode, message: string): ExtendedError {
  const err = new Error(message) as ExtendedError;
  err.data = { code };
  return err;
}

/**
 * Authenticates every connection once, at the handshake: verifies the Clerk token, creates the
 * user's row on first sight, and puts the user into `socket.data`. A refusal reaches the
 * client as `connect_error` with `data.code`.
 */
export function authMiddleware(verifier: TokenVerifier, users: UserService, logger: Logger) {
  return async (socket: ChatSocket, next: (err?: ExtendedError) => void) => {
    try {
      const token = tokenFromHandshake(socket.handshake);
      const verified = await verifier.verify(token);
      const dbUserId = await users.provision(verified.userId);
      socket.data = {
        userId: verified.userId,
        dbUserId,
        sessionId: verified.sessionId,
        tokenExpiresAt: verified.expiresAt,
      };
      next();
    } catch (e) {
      if (e instanceof TokenError) {
        logger.debug({ code: e.code }, "handshake refused");
        next(refuse(e.code, e.message));
      } else if (isUnavailable(e)) {
        logger.warn({ err: String(e) }, "handshake failed: database unavailable");
        next(refuse(ConnectErrorCode.UNAVAILABLE, "Service temporarily unavailable"));
      } else {
        logger.error({ err: e }, "handshake failed");
        next(refuse(ConnectErrorCode.UNAVAILABLE, "Internal error"));
      }
    }
  };
}

import { ErrorCode } from "../../../../protocol/constants.js";
import { TokenError, type TokenVerifier } from "../../auth/token-verifier.js";
import { AppError } from "../../services/errors.js";
import type { Revocations } from "../../services/revocations.js";
import type { UserService } from "../../services/user.service.js";
import type { CommandHandlers } from "../command.js";
import type { TokenExpiry } from "../token-expiry.js";
import { rooms } from "../types.js";

/** `user:stats`, and the in-band token refresh. */
export function userHandlers(deps: {
  users: UserService;
  verifier: TokenVerifier;
  expiry: TokenExpiry;
  revocations: Revocations;
}): Pick<CommandHandlers, "user:stats" | "auth:refresh"> {
  return {
    "user:stats": async (socket) => ({ stats: await deps.users.stats(socket.data.userId) }),

    // A new token for the same user extends the socket's life.
    "auth:refresh": async (socket, { token }) => {
      let verified: Awaited<ReturnType<TokenVerifier["verify"]>>;
      try {
        verified = await deps.verifier.verify(token);
      } catch (e) {
        if (!(e instanceof TokenError)) throw e;
        const code = e.code === "TOKEN_EXPIRED" ? ErrorCode.TOKEN_EXPIRED : ErrorCode.UNAUTHORIZED;
        throw new AppError(code, e.message);
      }
      if (verified.userId !== socket.data.userId) {
        throw new AppError(ErrorCode.FORBIDDEN, "The new token belongs to another user");
      }
      if (await deps.revocations.isRevoked(verified.userId, verified.sessionId)) {
        throw new AppError(ErrorCode.UNAUTHORIZED, "The session was revoked or the user deleted");
      }
      if (verified.sessionId !== socket.data.sessionId) {
        if (socket.data.sessionId) socket.leave(rooms.clerkSession(socket.data.sessionId));
        if (verified.sessionId) socket.join(rooms.clerkSession(verified.sessionId));
        socket.data.sessionId = verified.sessionId;
      }
      socket.data.tokenExpiresAt = verified.expiresAt;
      deps.expiry.schedule(socket);
      return { userId: verified.userId, expiresAt: new Date(verified.expiresAt).toISOString() };
    },
  };
}

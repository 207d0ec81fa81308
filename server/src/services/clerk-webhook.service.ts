import { DisconnectReason } from "../../../protocol/constants.js";
import type { ConnectionClosing } from "../../../protocol/index.js";
import type { Logger } from "../logger.js";
import { AppError, ErrorCode } from "./errors.js";
import type { Notifier } from "./notifier.js";
import type { Revocations } from "./revocations.js";
import type { UserService } from "./user.service.js";

/** The Clerk events this server acts on, as the webhook route parsed them. */
export type ClerkEvent =
  | {
      type: "user.created" | "user.updated";
      userId: string;
      email: string | null;
      avatarUrl: string | null;
      /** Clerk's event timestamp (epoch ms): the order of the user's events. */
      eventAt: number;
    }
  | { type: "user.deleted"; userId: string; eventAt: number }
  | {
      type: "session.revoked" | "session.ended" | "session.removed";
      sessionId: string;
      userId: string | null;
    };

/** What the sockets of a deleted user are told before they are disconnected. */
export const USER_DELETED_CLOSING: ConnectionClosing = {
  reason: DisconnectReason.USER_DELETED,
  message: "The user was deleted",
  reconnect: false,
};

/** What the sockets of a revoked or ended Clerk session are told before they are disconnected. */
export const SESSION_REVOKED_CLOSING: ConnectionClosing = {
  reason: DisconnectReason.SESSION_REVOKED,
  message: "The session was revoked or ended; sign in again",
  reconnect: false,
};

/**
 * Keeps the users table and the open sockets in step with Clerk. Every handler is idempotent:
 * Clerk (Svix) delivers at least once and in any order, so a redelivered or late event must
 * change nothing more. User events are ordered by Clerk's timestamp, and a deleted user stays
 * deleted (a tombstone) until a newer `user.created`.
 */
export class ClerkWebhookService {
  constructor(
    private readonly users: UserService,
    private readonly notifier: Notifier,
    private readonly logger: Logger,
    private readonly revocations: Revocations,
  ) {}

  async handle(event: ClerkEvent): Promise<void> {
    switch (event.type) {
      case "user.created":
      case "user.updated": {
        const created = event.type === "user.created";
        const result = await this.users.syncProfile(
          event.userId,
          { email: event.email, avatarUrl: event.avatarUrl },
          event.eventAt,
          created,
        );
        // Created again after a deletion: its tokens may connect again, on every node. Also
        // tried on a redelivery (a first attempt may have failed after the commit), best effort.
        if (created && result.applied) {
          await this.liftRevocation(event.userId, result.lifted ? "must" : "try");
        }
        if (!result.applied) {
          this.logger.info(
            { userId: event.userId, event: event.type, reason: result.reason },
            "clerk: profile event ignored",
          );
        }
        return;
      }
      case "user.deleted": {
        // First, so that from now on no node lets a token of the user in, not even one that
        // knows the user and would not ask the database.
        await this.revocations.revoke("user", event.userId);
        const result = await this.users.delete(event.userId, event.eventAt);
        if (!result.applied) {
          // A late redelivery: the user was created again since. Undo the revocation above.
          await this.liftRevocation(event.userId, "must");
          this.logger.info({ userId: event.userId }, "clerk: stale user.deleted ignored");
          return;
        }
        // Also when the row was already gone (a redelivery): a socket may have connected since.
        this.notifier.disconnectUser(event.userId, USER_DELETED_CLOSING);
        this.logger.info({ userId: event.userId, deleted: result.deleted }, "clerk: user deleted");
        return;
      }
      case "session.revoked":
      case "session.ended":
      case "session.removed":
        await this.revocations.revoke("session", event.sessionId);
        this.notifier.disconnectClerkSession(event.sessionId, SESSION_REVOKED_CLOSING);
        this.logger.info(
          { sessionId: event.sessionId, userId: event.userId, event: event.type },
          "clerk: session closed",
        );
        return;
    }
  }

  /**
   * Ends the user's revocation on every node. When it `must` and Redis failed, answers
   * UNAVAILABLE so that Svix retries (the database part is idempotent).
   */
  private async liftRevocation(userId: string, mode: "must" | "try"): Promise<void> {
    try {
      await this.revocations.lift("user", userId);
    } catch (err) {
      this.logger.warn({ userId, err: String(err) }, "clerk: could not lift a revocation");
      if (mode === "must") {
        throw new AppError(ErrorCode.UNAVAILABLE, "The service is temporarily unavailable; retry");
      }
    }
  }
}

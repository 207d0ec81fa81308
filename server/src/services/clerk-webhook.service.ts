import { DisconnectReason } from "../../../protocol/constants.js";
import type { Logger } from "../logger.js";
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
    }
  | { type: "user.deleted"; userId: string }
  | {
      type: "session.revoked" | "session.ended" | "session.removed";
      sessionId: string;
      userId: string | null;
    };

/**
 * Keeps the users table and the open sockets in step with Clerk. Every handler is idempotent:
 * Clerk (Svix) delivers at least once, so a redelivered event must change nothing more.
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
      case "user.updated":
        await this.users.syncProfile(event.userId, {
          email: event.email,
          avatarUrl: event.avatarUrl,
        });
        return;
      case "user.deleted": {
        // First, so that no token of the user can open a socket (and recreate the row) again.
        await this.revocations.revoke("user", event.userId);
        const deleted = await this.users.delete(event.userId);
        // Also when the row was already gone (a redelivery): a socket may have connected since.
        this.notifier.disconnectUser(event.userId, {
          reason: DisconnectReason.USER_DELETED,
          message: "The user was deleted",
          reconnect: false,
        });
        this.logger.info({ userId: event.userId, deleted }, "clerk: user deleted");
        return;
      }
      case "session.revoked":
      case "session.ended":
      case "session.removed":
        await this.revocations.revoke("session", event.sessionId);
        this.notifier.disconnectClerkSession(event.sessionId, {
          reason: DisconnectReason.SESSION_REVOKED,
          message: "The session was revoked or ended; sign in again",
          reconnect: false,
        });
        this.logger.info(
          { sessionId: event.sessionId, userId: event.userId, event: event.type },
          "clerk: session closed",
        );
        return;
    }
  }
}

import type { Server, Socket } from "socket.io";
import type { ClientToServerEvents, ServerToClientEvents } from "../../../protocol/index.js";

/** Events between server nodes (none beyond the adapter's own). */
export type InterServerEvents = Record<string, never>;

/** What the server keeps on each authenticated socket (server-only: not in the protocol). */
export interface SocketData {
  /** Clerk user id (`sub`). */
  userId: string;
  /** Primary key of the user's `users` row. */
  dbUserId: string;
  /** `users.subscription_tier` when the socket connected: picks the per-user write limits. */
  subscriptionTier: string | null;
  /** Clerk session id (`sid`), when the token has one. */
  sessionId: string | null;
  /** Expiry of the current token, epoch milliseconds. */
  tokenExpiresAt: number;
}

export type ChatServer = Server<
  ClientToServerEvents,
  ServerToClientEvents,
  InterServerEvents,
  SocketData
>;
export type ChatSocket = Socket<
  ClientToServerEvents,
  ServerToClientEvents,
  InterServerEvents,
  SocketData
>;

/** Room names. A socket joins a chat's room only after the service has checked ownership. */
export const rooms = {
  /** Every socket of a user. */
  user: (userId: string) => `user:${userId}`,
  /** Every socket that has the chat open. */
  chat: (chatId: string) => `session:${chatId}`,
  /** Every socket authenticated with one Clerk session (for revocation). */
  clerkSession: (sessionId: string) => `clerk-session:${sessionId}`,
} as const;

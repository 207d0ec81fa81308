import type { Server, Socket } from "socket.io";
import type {
  ClientToServerEvents,
  InterServerEvents,
  ServerToClientEvents,
  SocketData,
} from "../../../protocol/index.js";

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

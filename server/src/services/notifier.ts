import type { ChatMessage, ChatSummary } from "../../../protocol/index.js";

/**
 * How services announce changes, without knowing about Socket.IO. The socket layer implements
 * it with rooms (and the Redis adapter across nodes); the service-role HTTP API shares it.
 */
export interface Notifier {
  /** To every socket that has the chat open. */
  messageCreated(userId: string, message: ChatMessage): void;
  /** To every socket of the user. */
  chatCreated(userId: string, chat: ChatSummary): void;
  /** To every socket of the user: a rename or a new message (preview and order). */
  chatUpdated(userId: string, chat: ChatSummary): void;
  /** To every socket of the user; sockets that had the chat open leave its room. */
  chatDeleted(userId: string, chatId: string): void;
  /** The user's counters changed; their devices get fresh stats shortly (coalesced). */
  statsChanged(userId: string): void;
}

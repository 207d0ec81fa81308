import type {
  ChatGenerating,
  ChatMessage,
  ChatSummary,
  ConnectionClosing,
  MessageDelta,
  MessageStopped,
  MessageStreamFailed,
  MessageStreaming,
} from "../../../protocol/index.js";

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
  /** A streamed reply began: to every socket that has the chat open. */
  messageStreaming(event: MessageStreaming): void;
  /** A piece of a streamed reply: to every socket that has the chat open. */
  messageDelta(event: MessageDelta): void;
  /** A streamed reply failed or was abandoned: to every socket that has the chat open. */
  messageFailed(event: MessageStreamFailed): void;
  /** A streamed reply was stopped by the user: to every socket that has the chat open. */
  messageStopped(event: MessageStopped): void;
  /** A reply started or stopped being generated: to every socket of the user (the sidebar). */
  chatGenerating(userId: string, event: ChatGenerating): void;
  /**
   * An event owed to the user's devices could not be built (a database error after a commit):
   * every socket of the user, on every node, is told to resynchronise (`connection:resync`).
   */
  resyncUser(userId: string): void;
  /** Tells every socket of the user, on every node, `closing`, then disconnects them. */
  disconnectUser(userId: string, closing: ConnectionClosing): void;
  /** The same for every socket authenticated with one Clerk session (`sid`), on every node. */
  disconnectClerkSession(sessionId: string, closing: ConnectionClosing): void;
}

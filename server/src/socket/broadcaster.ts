import type {
  ChatMessage,
  ChatSummary,
  ConnectionClosing,
  MessageDelta,
  MessageStreamFailed,
  MessageStreaming,
  UserStats,
} from "../../../protocol/index.js";
import type { Logger } from "../logger.js";
import type { Notifier } from "../services/notifier.js";
import { type ChatServer, rooms } from "./types.js";

/** How long stats changes are coalesced before one fresh read is broadcast. */
const STATS_DEBOUNCE_MS = 100;

/**
 * The Notifier over Socket.IO rooms. With the Redis adapter, `io.to(room).emit` reaches the
 * room's sockets on every node.
 */
export class SocketBroadcaster implements Notifier {
  private readonly pendingStats = new Map<string, NodeJS.Timeout>();

  constructor(
    private readonly io: ChatServer,
    private readonly loadStats: (userId: string) => Promise<UserStats>,
    private readonly logger: Logger,
  ) {}

  messageCreated(_userId: string, message: ChatMessage): void {
    this.io.to(rooms.chat(message.chatId)).emit("message:created", { message });
  }

  chatCreated(userId: string, chat: ChatSummary): void {
    this.io.to(rooms.user(userId)).emit("chat:created", { chat });
  }

  chatUpdated(userId: string, chat: ChatSummary): void {
    this.io.to(rooms.user(userId)).emit("chat:updated", { chat });
  }

  chatDeleted(userId: string, chatId: string): void {
    this.io.to(rooms.user(userId)).emit("chat:deleted", { chatId });
    this.io.in(rooms.chat(chatId)).socketsLeave(rooms.chat(chatId));
  }

  messageStreaming(event: MessageStreaming): void {
    this.io.to(rooms.chat(event.chatId)).emit("message:streaming", event);
  }

  messageDelta(event: MessageDelta): void {
    this.io.to(rooms.chat(event.chatId)).emit("message:delta", event);
  }

  messageFailed(event: MessageStreamFailed): void {
    this.io.to(rooms.chat(event.chatId)).emit("message:failed", event);
  }

  disconnectUser(userId: string, closing: ConnectionClosing): void {
    this.closeRoom(rooms.user(userId), closing);
  }

  disconnectClerkSession(sessionId: string, closing: ConnectionClosing): void {
    this.closeRoom(rooms.clerkSession(sessionId), closing);
  }

  /**
   * `connection:closing`, then the disconnect, on every node. Both travel through the same
   * Redis connection in this order, each node handles them in that order, and a socket's
   * disconnect waits until its buffered packets (the closing event) are written.
   */
  private closeRoom(room: string, closing: ConnectionClosing): void {
    this.io.to(room).emit("connection:closing", closing);
    this.io.in(room).disconnectSockets(true);
  }

  /** Coalesces bursts (a message and a chat in the same instant) into one read and one event. */
  statsChanged(userId: string): void {
    if (this.pendingStats.has(userId)) return;
    const timer = setTimeout(() => {
      this.pendingStats.delete(userId);
      this.loadStats(userId).then(
        (stats) => this.io.to(rooms.user(userId)).emit("stats:updated", { stats }),
        (err) => this.logger.warn({ err, userId }, "could not load stats for broadcast"),
      );
    }, STATS_DEBOUNCE_MS);
    timer.unref();
    this.pendingStats.set(userId, timer);
  }

  /** Cancels pending stats broadcasts (shutdown). */
  close(): void {
    for (const t of this.pendingStats.values()) clearTimeout(t);
    this.pendingStats.clear();
  }
}

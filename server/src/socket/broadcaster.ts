import { ResyncReason } from "../../../protocol/constants.js";
import type {
  ChatGenerating,
  ChatMessage,
  ChatSummary,
  ConnectionClosing,
  MessageDelta,
  MessageStopped,
  MessageStreamFailed,
  MessageStreaming,
  UserStats,
} from "../../../protocol/index.js";
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";
import { MAIN_CHANNEL_ROOM } from "../redis/sharded-adapter.js";
import type { Notifier } from "../services/notifier.js";
import { type ChatServer, rooms } from "./types.js";

/**
 * How long stats changes are coalesced: every user whose stats changed within this window gets
 * one fresh read (one query for all of them) and one event. Stats are counters for a profile
 * panel, not part of a chat: a second is not noticed, while an event per message would cost
 * the user's devices as many packets as the messages themselves.
 */
const STATS_DEBOUNCE_MS = 1000;
/**
 * How long loaded stats may wait for their user's next event: a user's stats go out in the same
 * turn of the event loop as that user's next `message:created` or `chat:*` from this node, when
 * there is one within this time (then the socket writes them together: one system call per
 * device, coalesce-writes.ts), else on their own when it has passed.
 */
const STATS_ALIGN_MS = 500;
/** Users whose stats events are written per turn of the event loop, so sends are not held up. */
const STATS_EMIT_CHUNK = 100;
/** Most users read by one stats query. */
const MAX_STATS_PER_QUERY = 1000;
/**
 * `connection:resync`'s `spreadMs`: the node's sockets re-read over about 2 ms each (500 a
 * second), at most 10 s, so that an outage's end does not hit the database all at once.
 */
const RESYNC_SPREAD_MS_PER_SOCKET = 2;
const RESYNC_MAX_SPREAD_MS = 10_000;

/**
 * The Notifier over Socket.IO rooms. With the Redis adapter, `io.to(room).emit` reaches the
 * room's sockets on every node.
 */
export class SocketBroadcaster implements Notifier {
  private readonly pendingStats = new Set<string>();
  private statsTimer: NodeJS.Timeout | undefined;
  /** Stats loaded and not yet sent, by user: they wait for the user's next event (STATS_ALIGN_MS). */
  private readonly readyStats = new Map<string, UserStats>();
  private readyTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly io: ChatServer,
    private readonly loadStats: (userIds: string[]) => Promise<Map<string, UserStats>>,
    private readonly logger: Logger,
    private readonly metrics?: Metrics,
  ) {}

  /**
   * Every socket of this node may have missed events from other nodes (cluster-monitor.ts):
   * `connection:resync` to each of them, to catch up without reconnecting.
   */
  resyncLocal(reason: ResyncReason): void {
    const sockets = this.io.engine.clientsCount;
    const spreadMs = Math.min(RESYNC_MAX_SPREAD_MS, sockets * RESYNC_SPREAD_MS_PER_SOCKET);
    this.logger.warn({ reason, sockets, spreadMs }, "events may have been missed: resync");
    this.metrics?.resyncs.inc({ reason });
    this.io.local.emit("connection:resync", { reason, spreadMs });
  }

  resyncUser(userId: string): void {
    this.metrics?.resyncs.inc({ reason: ResyncReason.EVENTS_DROPPED });
    this.io
      .to(rooms.user(userId))
      .emit("connection:resync", { reason: ResyncReason.EVENTS_DROPPED, spreadMs: 0 });
  }

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

  messageStopped(event: MessageStopped): void {
    this.io.to(rooms.chat(event.chatId)).emit("message:stopped", event);
  }

  chatGenerating(userId: string, event: ChatGenerating): void {
    this.io.to(rooms.user(userId)).emit("chat:generating", event);
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
    // To two rooms (one that nobody joins): the sharded adapter then sends it on the main
    // channel, the one the disconnect takes, so the two cannot overtake each other.
    this.io.to([room, MAIN_CHANNEL_ROOM]).emit("connection:closing", closing);
    this.io.in(room).disconnectSockets(true);
  }

  /**
   * Coalesces the changes of every user over STATS_DEBOUNCE_MS into one read and one event each.
   * Called in the turn that broadcasts the change: the user's stats loaded earlier and still
   * waiting (readyStats) go out now, with the change's events.
   */
  statsChanged(userId: string): void {
    this.sendReadyStats(userId);
    this.pendingStats.add(userId);
    this.statsTimer ??= setTimeout(() => this.flushStats(), STATS_DEBOUNCE_MS).unref();
  }

  private flushStats(): void {
    this.statsTimer = undefined;
    const users = [...this.pendingStats];
    this.pendingStats.clear();
    for (let i = 0; i < users.length; i += MAX_STATS_PER_QUERY) {
      const chunk = users.slice(i, i + MAX_STATS_PER_QUERY);
      this.loadStats(chunk).then(
        (stats) => this.holdStats(stats),
        (err) =>
          this.logger.warn({ err, users: chunk.length }, "could not load stats for broadcast"),
      );
    }
  }

  /** Keeps loaded stats until their user's next event, at most STATS_ALIGN_MS (see there). */
  private holdStats(stats: Map<string, UserStats>): void {
    for (const [userId, s] of stats) this.readyStats.set(userId, s);
    this.readyTimer ??= setTimeout(() => {
      this.readyTimer = undefined;
      const entries = [...this.readyStats];
      this.readyStats.clear();
      this.emitStats(entries);
    }, STATS_ALIGN_MS).unref();
  }

  private sendReadyStats(userId: string): void {
    const stats = this.readyStats.get(userId);
    if (stats === undefined) return;
    this.readyStats.delete(userId);
    this.io.to(rooms.user(userId)).emit("stats:updated", { stats });
  }

  /** Writes the events a chunk per turn of the event loop: a thousand users at once would stall it. */
  private emitStats(entries: [string, UserStats][]): void {
    for (const [userId, stats] of entries.slice(0, STATS_EMIT_CHUNK))
      this.io.to(rooms.user(userId)).emit("stats:updated", { stats });
    if (entries.length > STATS_EMIT_CHUNK)
      setImmediate(() => this.emitStats(entries.slice(STATS_EMIT_CHUNK)));
  }

  /** Cancels pending stats broadcasts (shutdown). */
  close(): void {
    clearTimeout(this.statsTimer);
    this.statsTimer = undefined;
    this.pendingStats.clear();
    clearTimeout(this.readyTimer);
    this.readyTimer = undefined;
    this.readyStats.clear();
  }
}

/**
 * Chat coordination: the sidebar and the per-chat stores kept live from the server's events,
 * opened and closed (counted), caught up after every (re)connect and on `connection:resync`,
 * and re-snapshotted when a streamed reply misses text. It changes the stores only through
 * their methods.
 */
import type {
  ChatMessage,
  CommandInput,
  CommandName,
  CommandResults,
  ConnectionResync,
  ServerToClientEvents,
} from "@chat-backend/protocol";
import { ErrorCode, Limits } from "@chat-backend/protocol";
import type { Commands } from "./commands.js";
import type { Connection } from "./connection.js";
import { toChatClientError } from "./errors.js";
import type { Outbox } from "./outbox.js";
import { ChatState, SidebarState } from "./stores.js";
import { backoff, randomId, Timers } from "./util.js";

/**
 * How long a streamed reply may wait for text before a delta it received (a delta from another
 * server node arriving first) before the chat is re-snapshotted (`chat:open`).
 */
const STREAM_GAP_WAIT_MS = 500;
/** The most a `connection:resync` is put off (its `spreadMs`, bounded). */
const MAX_RESYNC_SPREAD_MS = 30_000;
/** Attempts of one resynchronisation whose commands fail (UNAVAILABLE, timeouts). */
const RESYNC_ATTEMPTS = 5;

/** Server events the coordination applies and the client re-emits to the app. */
export type RelayedEvent =
  | "chat:created"
  | "chat:updated"
  | "chat:deleted"
  | "chat:generating"
  | "stats:updated"
  | "connection:resync";

export interface ChatsHooks {
  /** A new message in an open chat, in seq order, exactly once. */
  created(message: ChatMessage): void;
  /** A server event, after it was applied. */
  relay<K extends RelayedEvent>(event: K, payload: Parameters<ServerToClientEvents[K]>[0]): void;
  report(err: unknown, context: string): void;
}

/** The catch-up bookkeeping of one chat (the coordination's, not the store's). */
interface SyncRun {
  /** In-flight catch-up (`message:sync`), and whether another pass was asked for meanwhile. */
  syncing: Promise<void> | null;
  syncAgain: boolean;
  /** A re-snapshot for a streamed reply's missed text is scheduled or running. */
  resnapshotting: boolean;
}

export class Chats {
  readonly sidebar: SidebarState;

  private readonly connection: Connection;
  private readonly commands: Commands;
  private readonly hooks: ChatsHooks;
  private readonly syncPageSize: number;
  private readonly timers = new Timers();
  private readonly states = new Map<string, ChatState>();
  private readonly runs = new Map<string, SyncRun>();
  /** How many `openChat` calls of each chat are not matched by a `closeChat` yet. */
  private readonly openCounts = new Map<string, number>();
  private outbox: Outbox | undefined;
  private resyncScheduled = false;
  private resyncing: Promise<void> | null = null;
  private resyncAgain = false;

  constructor(
    connection: Connection,
    commands: Commands,
    hooks: ChatsHooks,
    options: { syncPageSize?: number | undefined },
  ) {
    this.connection = connection;
    this.commands = commands;
    this.hooks = hooks;
    this.syncPageSize = Math.min(
      Limits.MAX_PAGE_SIZE,
      Math.max(1, options.syncPageSize ?? Limits.MAX_PAGE_SIZE),
    );
    this.sidebar = new SidebarState((input) => this.send("chat:list", input));
    this.listen();
  }

  /** The outbox whose entries the chat stores show (set once, before anything is sent). */
  attach(outbox: Outbox): void {
    this.outbox = outbox;
  }

  close(): void {
    this.timers.clear();
  }

  /** The store of one chat (created on first use). */
  chat(chatId: string): ChatState {
    let state = this.states.get(chatId);
    if (!state) {
      state = new ChatState(chatId, {
        pending: (id) => this.outbox?.pendingFor(id) ?? [],
        loadOlder: (s, limit) => this.loadOlder(s, limit),
      });
      this.states.set(chatId, state);
    }
    return state;
  }

  /** The store of a chat that exists already, if any. */
  known(chatId: string): ChatState | undefined {
    return this.states.get(chatId);
  }

  // -------------------------------------------------------------------------------------------
  // Commands with store effects

  async create(input: CommandInput<"chat:create">): Promise<CommandResults["chat:create"]> {
    const payload = { ...input, id: input.id ?? randomId() };
    for (let attempt = 0; ; attempt++) {
      try {
        const data = await this.send("chat:create", payload);
        this.sidebar.revive(data.chat.id);
        this.sidebar.upsert(data.chat);
        return data;
      } catch (e) {
        const err = toChatClientError(e, "chat:create");
        // The id makes a retried create return the same chat.
        if (!err.retryable || attempt >= 2 || this.connection.closed) throw err;
        await this.timers.sleep(err.retryAfterMs ?? backoff(attempt));
      }
    }
  }

  async rename(input: CommandInput<"chat:rename">): Promise<CommandResults["chat:rename"]> {
    const data = await this.send("chat:rename", input);
    this.sidebar.upsert(data.chat);
    return data;
  }

  async delete(input: CommandInput<"chat:delete">): Promise<CommandResults["chat:delete"]> {
    try {
      const data = await this.send("chat:delete", input);
      this.gone(input.chatId);
      return data;
    } catch (e) {
      const err = toChatClientError(e, "chat:delete");
      if (err.code === ErrorCode.NOT_FOUND) this.gone(input.chatId);
      throw err;
    }
  }

  async open(input: CommandInput<"chat:open">): Promise<CommandResults["chat:open"]> {
    const state = this.chat(input.chatId);
    this.openCounts.set(state.chatId, (this.openCounts.get(state.chatId) ?? 0) + 1);
    state.beginLoad();
    // Known deleted before the chat was read: found now, it exists again (created anew).
    const deletedBefore = this.sidebar.isDeleted(input.chatId);
    try {
      const data = await this.send("chat:open", input);
      if (deletedBefore) this.sidebar.revive(data.chat.id);
      this.sidebar.upsert(data.chat);
      state.load(data.messages, data.hasMore);
      state.applyStreams(data.streams);
      this.outbox?.collectConfirmed(state.chatId);
      if (state.hasGap) this.catchUp(state);
      return data;
    } catch (e) {
      const err = toChatClientError(e, "chat:open");
      if (err.code === ErrorCode.NOT_FOUND) this.gone(input.chatId);
      else state.loadFailed(err);
      throw err;
    }
  }

  async leave(input: CommandInput<"chat:close">): Promise<CommandResults["chat:close"]> {
    const state = this.states.get(input.chatId);
    const key = state?.chatId ?? input.chatId;
    const count = this.openCounts.get(key) ?? 0;
    if (count > 1) {
      this.openCounts.set(key, count - 1);
      return { chatId: input.chatId };
    }
    this.openCounts.delete(key);
    state?.setOpen(false);
    // Rooms belong to a connection: offline, there is nothing to leave.
    if (!this.connection.connected) return { chatId: input.chatId };
    return this.send("chat:close", input);
  }

  async stopReply(input: CommandInput<"message:stop">): Promise<CommandResults["message:stop"]> {
    const data = await this.send("message:stop", input);
    const state = this.states.get(input.chatId);
    if (state) {
      if (data.status === "stopped") state.streamStopped(data.streamId);
      if (data.message) this.ingest(state, [data.message]);
      else if (data.status !== "stopped") {
        state.streamFailed(data.streamId, {
          reason: "FAILED",
          message: "The reply ended before it was stopped",
        });
      }
    }
    return data;
  }

  // -------------------------------------------------------------------------------------------
  // Messages

  /** A message this device sent was stored (its ack): the sidebar and the chat follow it. */
  confirmed(message: ChatMessage): void {
    this.sidebar.applyMessage(message);
    const state = this.states.get(message.chatId);
    if (state) this.ingest(state, [message]);
  }

  /** Whether an open chat still waits (behind a gap) for the message with this seq. */
  awaiting(chatId: string, seq: number): boolean {
    const state = this.states.get(chatId);
    return state?.open === true && state.status === "ready" && seq > state.lastSeq;
  }

  private ingest(state: ChatState, messages: readonly ChatMessage[]): void {
    const appended = state.ingest(messages);
    for (const message of appended) this.hooks.created(message);
    if (appended.length) this.outbox?.collectConfirmed(state.chatId);
    if (state.hasGap && state.open) this.catchUp(state);
  }

  /** A chat was deleted (here, on another device, or found missing). */
  private gone(chatId: string): void {
    this.openCounts.delete(chatId);
    this.sidebar.remove(chatId);
    this.states.get(chatId)?.markDeleted();
    this.outbox?.dropChat(chatId);
  }

  private send<C extends CommandName>(
    name: C,
    payload: CommandInput<C>,
  ): Promise<CommandResults[C]> {
    return this.commands.send(name, payload);
  }

  // -------------------------------------------------------------------------------------------
  // Live events

  private listen(): void {
    const c = this.connection;
    c.onServer("message:created", ({ message }) => {
      // The sidebar takes its entry from the `chat:updated` that follows every stored message
      // (with the server's `version` and `updatedAt`): one sidebar change per message.
      const state = this.states.get(message.chatId);
      if (state) this.ingest(state, [message]);
    });
    c.onServer("chat:created", (event) => {
      this.sidebar.upsert(event.chat);
      this.hooks.relay("chat:created", event);
    });
    c.onServer("chat:updated", (event) => {
      this.sidebar.upsert(event.chat);
      this.hooks.relay("chat:updated", event);
    });
    c.onServer("chat:deleted", (event) => {
      this.gone(event.chatId);
      this.hooks.relay("chat:deleted", event);
    });
    c.onServer("chat:generating", (event) => {
      this.sidebar.applyGenerating(event);
      this.hooks.relay("chat:generating", event);
    });
    c.onServer("stats:updated", (event) => this.hooks.relay("stats:updated", event));
    c.onServer("connection:resync", (event) => {
      this.hooks.relay("connection:resync", event);
      this.scheduleResync(event);
    });
    c.onServer("message:streaming", (event) => this.states.get(event.chatId)?.streamStarted(event));
    c.onServer("message:delta", (delta) => {
      const state = this.states.get(delta.chatId);
      if (state?.streamDelta(delta) === "gap") this.awaitStreamGap(state, delta.streamId);
    });
    c.onServer("message:stopped", (event) =>
      this.states.get(event.chatId)?.streamStopped(event.streamId),
    );
    c.onServer("message:failed", (event) =>
      this.states.get(event.chatId)?.streamFailed(event.streamId, event),
    );
  }

  private run(chatId: string): SyncRun {
    let run = this.runs.get(chatId);
    if (!run) {
      run = { syncing: null, syncAgain: false, resnapshotting: false };
      this.runs.set(chatId, run);
    }
    return run;
  }

  /**
   * Text of a streamed reply was missed (or another node's delta is late): wait a moment for
   * it, then take a fresh snapshot of the chat (`chat:open`, as after a reconnect).
   */
  private awaitStreamGap(state: ChatState, streamId: string): void {
    const run = this.run(state.chatId);
    if (run.resnapshotting) return;
    run.resnapshotting = true;
    this.timers.later(STREAM_GAP_WAIT_MS, () => {
      if (!state.hasStreamGap(streamId) || !state.open || !this.connection.connected) {
        run.resnapshotting = false;
        return;
      }
      void this.rejoin(state).finally(() => {
        run.resnapshotting = false;
      });
    });
  }

  // -------------------------------------------------------------------------------------------
  // Catch-up

  /** After every (re)connect: the sidebar, and every open chat rejoined and caught up. */
  async afterConnect(): Promise<void> {
    const tasks: Promise<unknown>[] = [
      this.sidebar.refresh().catch((e) => this.hooks.report(e, "sidebar")),
    ];
    for (const state of this.states.values()) if (state.open) tasks.push(this.rejoin(state));
    await Promise.all(tasks);
  }

  /**
   * After a reconnect (or a resync): join the chat's stream again, then fetch what was missed.
   * False when it failed (the chat being gone is not a failure: it turns `deleted`).
   */
  private async rejoin(state: ChatState): Promise<boolean> {
    try {
      if (state.status !== "ready") {
        await this.open({ chatId: state.chatId });
        return true;
      }
      const data = await this.send("chat:open", { chatId: state.chatId, limit: 1 });
      this.sidebar.upsert(data.chat);
      this.ingest(state, data.messages);
      if (data.chat.lastSeq > state.lastSeq) await this.syncChat(state);
      // After the catch-up, so that a reply stored meanwhile replaces its streamed item.
      state.applyStreams(data.streams);
      return true;
    } catch (e) {
      const err = toChatClientError(e, "chat:open");
      if (err.code === ErrorCode.NOT_FOUND) {
        this.gone(state.chatId);
        return true;
      }
      this.hooks.report(err, `rejoin ${state.chatId}`);
      return false;
    }
  }

  private catchUp(state: ChatState): void {
    this.syncChat(state).catch((e) => {
      const err = toChatClientError(e, "message:sync");
      if (err.code === ErrorCode.NOT_FOUND) this.gone(state.chatId);
      else this.hooks.report(err, `sync ${state.chatId}`);
    });
  }

  /** `message:sync` from the last contiguous seq while `hasMore`; one run per chat at a time. */
  private syncChat(state: ChatState): Promise<void> {
    const run = this.run(state.chatId);
    if (run.syncing) {
      run.syncAgain = true;
      return run.syncing;
    }
    const pass = async () => {
      let progressed = true;
      do {
        run.syncAgain = false;
        progressed = false;
        for (;;) {
          if (!this.connection.connected || state.status !== "ready") return;
          const after = state.lastSeq;
          const page = await this.send("message:sync", {
            chatId: state.chatId,
            afterSeq: after,
            limit: this.syncPageSize,
          });
          this.ingest(state, page.messages);
          if (state.lastSeq > after) progressed = true;
          if (!page.hasMore || state.lastSeq <= after) break;
        }
      } while (run.syncAgain && progressed);
    };
    run.syncing = pass().finally(() => {
      run.syncing = null;
    });
    return run.syncing;
  }

  private async loadOlder(state: ChatState, limit?: number): Promise<void> {
    if (state.status !== "ready" || !state.hasMoreBefore) return;
    const before = state.firstSeq;
    if (before === undefined) return;
    const page = await this.send("message:history", {
      chatId: state.chatId,
      before,
      ...(limit ? { limit } : {}),
    });
    state.prepend(page.messages, page.hasMore);
  }

  // -------------------------------------------------------------------------------------------
  // Resynchronisation (`connection:resync`, on the open connection)

  /**
   * At a random moment within `spreadMs` (so that a node's devices do not all query at once),
   * the same catch-up as after a reconnect. Another resync asked for before it starts is the
   * same one; one asked for while it runs runs after it.
   */
  private scheduleResync(event: ConnectionResync | undefined): void {
    if (this.resyncScheduled || this.connection.closed) return;
    this.resyncScheduled = true;
    const spreadMs = event?.spreadMs;
    const spread =
      typeof spreadMs === "number" && spreadMs > 0 ? Math.min(spreadMs, MAX_RESYNC_SPREAD_MS) : 0;
    this.timers.later(Math.random() * spread, () => {
      this.resyncScheduled = false;
      void this.resync();
    });
  }

  private resync(): Promise<void> {
    if (this.resyncing) {
      this.resyncAgain = true;
      return this.resyncing;
    }
    const run = async () => {
      do {
        this.resyncAgain = false;
        for (let attempt = 1; ; attempt++) {
          // Disconnected: the reconnect's own catch-up does the same.
          if (this.connection.closed || !this.connection.connected || this.connection.signedOut) {
            return;
          }
          if (await this.resyncOnce()) break;
          if (attempt >= RESYNC_ATTEMPTS) break;
          await this.timers.sleep(backoff(attempt - 1, 500, 5000));
        }
      } while (this.resyncAgain);
    };
    this.resyncing = run().finally(() => {
      this.resyncing = null;
    });
    return this.resyncing;
  }

  /** The sidebar re-listed and every open chat caught up; false when something failed. */
  private async resyncOnce(): Promise<boolean> {
    const results = await Promise.all([
      this.sidebar.resync().then(
        () => true,
        (e: unknown) => {
          this.hooks.report(e, "resync sidebar");
          return false;
        },
      ),
      ...[...this.states.values()].filter((s) => s.open).map((s) => this.rejoin(s)),
    ]);
    return results.every(Boolean);
  }
}

/**
 * The chat client: one Socket.IO connection per client, authenticated with a Clerk-style
 * `getToken()`, with typed commands, live stores, catch-up after every reconnect and an outbox
 * that delivers every sent message exactly once.
 */
import { io, type ManagerOptions, type Socket, type SocketOptions } from "socket.io-client";
import { ConnectErrorCode, DisconnectReason, ErrorCode, Limits } from "../../protocol/constants.js";
import type {
  Ack,
  ChatMessage,
  ClientToServerEvents,
  CommandInput,
  CommandName,
  CommandResults,
  ConnectionClosing,
  ConnectionResync,
  ServerToClientEvents,
} from "../../protocol/index.js";
import { ChatClientError, ClientErrorCode, toChatClientError } from "./errors.js";
import {
  memoryOutboxStorage,
  type OutboxEntry,
  type OutboxRecord,
  type OutboxStorage,
} from "./outbox.js";
import {
  ChatState,
  type ChatStore,
  type ReadableStore,
  SidebarState,
  type SidebarStore,
} from "./stores.js";
import {
  backoff,
  Emitter,
  randomId,
  refreshDelay,
  Store,
  sameItems,
  type Timer,
  tokenTimes,
} from "./util.js";

/**
 * - `connecting`: the first connection is being made (or `reconnect()` was called);
 * - `online`: connected and authenticated; commands run now;
 * - `offline`: not connected (network down, server unreachable or restarting); the client keeps
 *   retrying and catches up when it is back;
 * - `reauthenticating`: the server refused or dropped the token; a fresh one is being fetched;
 * - `signedOut`: `getToken()` returned null, or the server refused the token (or the page's
 *   origin, `ORIGIN_NOT_ALLOWED`) for good. Nothing is retried until `reconnect()` (e.g. after
 *   the user signs in again).
 */
export type ConnectionState =
  | "connecting"
  | "online"
  | "offline"
  | "reauthenticating"
  | "signedOut";

export interface ChatClientOptions {
  /** Server origin, e.g. `https://chat.example.com`. */
  url: string;
  /**
   * Returns a session token, or null when the user is signed out. Clerk: `getToken` from
   * `useAuth()` (`@clerk/clerk-react`, `@clerk/clerk-expo`). Called for every (re)connect and
   * for every in-band refresh, so it should return a fresh (or cached but unexpired) token.
   */
  getToken: () => Promise<string | null>;
  /** Where unsent messages are kept; default in memory. */
  outboxStorage?: OutboxStorage | undefined;
  /** Passed to socket.io-client's `io()` (`auth`, `autoConnect` and `forceNew` are the SDK's). */
  socketOptions?: Partial<ManagerOptions & SocketOptions> | undefined;
  /** Milliseconds to wait for a command's ack; default 15 000. */
  commandTimeoutMs?: number | undefined;
  /** Messages per `message:sync` page during catch-up; default 200 (the server's maximum). */
  syncPageSize?: number | undefined;
  /**
   * Follow the browser's `online`/`offline` events (default true where `window` has them). In
   * React Native, call `setNetworkAvailable()` from NetInfo instead.
   */
  detectNetwork?: boolean | undefined;
}

/** Events of `client.on()`. */
export interface ChatClientEvents {
  /** The connection state changed. */
  state: (state: ConnectionState, previous: ConnectionState) => void;
  /**
   * A new message in an open chat, after de-duplication and gap filling: per chat, every
   * message exactly once, in seq order (live, caught up after a reconnect, or from an ack).
   */
  "message:created": (event: { message: ChatMessage }) => void;
  "chat:created": ServerToClientEvents["chat:created"];
  "chat:updated": ServerToClientEvents["chat:updated"];
  "chat:deleted": ServerToClientEvents["chat:deleted"];
  /** A reply started or stopped being generated in one of the user's chats (`sidebar` has it). */
  "chat:generating": ServerToClientEvents["chat:generating"];
  "stats:updated": ServerToClientEvents["stats:updated"];
  "connection:closing": (event: ConnectionClosing) => void;
  /**
   * The server said events may have been missed (`connection:resync`); the SDK re-lists the
   * sidebar and catches up the open chats by itself, without reconnecting. Informational (an
   * app that keeps data of its own, stats for example, may re-read it).
   */
  "connection:resync": (event: ConnectionResync) => void;
  /** An outbox entry changed (pending, sending, confirmed, failed). */
  outbox: (event: { entry: OutboxEntry }) => void;
  /** The token was refreshed in-band (`auth:refresh`). */
  "auth:refreshed": (event: CommandResults["auth:refresh"]) => void;
  /** A background operation failed (catch-up, refresh, storage…). Informational. */
  error: (event: { error: ChatClientError; context: string }) => void;
}

export interface OutboxStore extends ReadableStore<readonly OutboxEntry[]> {
  /** Sends a failed entry again (same clientId). */
  retry(clientId: string): void;
  /** Drops an entry (pending or failed); its `sendMessage` promise rejects with CANCELLED. */
  discard(clientId: string): Promise<void>;
}

export interface ChatClient {
  /** The connection state, as a store (`useSyncExternalStore(c.subscribe, c.getSnapshot)`). */
  readonly connection: ReadableStore<ConnectionState>;
  /** Same as `connection.getSnapshot()`. */
  readonly state: ConnectionState;
  /** The user's chats, live. */
  readonly sidebar: SidebarStore;
  /** Unconfirmed messages of every chat (pending, sending, failed), in send order. */
  readonly outbox: OutboxStore;
  /** Resolves once the outbox has been read from its storage. */
  readonly ready: Promise<void>;
  /** The store of one chat (created on first use; live once `openChat` was called). */
  chat(chatId: string): ChatStore;
  on<K extends keyof ChatClientEvents>(event: K, listener: ChatClientEvents[K]): () => void;

  listChats(input?: CommandInput<"chat:list">): Promise<CommandResults["chat:list"]>;
  /** Creates a chat; retried safely (a client-generated id makes it idempotent). */
  createChat(input?: CommandInput<"chat:create">): Promise<CommandResults["chat:create"]>;
  renameChat(input: CommandInput<"chat:rename">): Promise<CommandResults["chat:rename"]>;
  deleteChat(input: CommandInput<"chat:delete">): Promise<CommandResults["chat:delete"]>;
  /** Opens a chat: loads its latest page into `chat(chatId)` and keeps it live and caught up. */
  openChat(input: CommandInput<"chat:open">): Promise<CommandResults["chat:open"]>;
  closeChat(input: CommandInput<"chat:close">): Promise<CommandResults["chat:close"]>;
  /**
   * Sends a message through the outbox: it shows as pending at once, is retried with the same
   * clientId until the server stores it, and resolves with the stored message (rejects when
   * the server refuses it for good). Awaiting is optional: rejections are never unhandled.
   */
  sendMessage(input: {
    chatId: string;
    content: string;
    clientId?: string;
  }): Promise<CommandResults["message:send"]>;
  /**
   * Stops a streamed reply in progress (`message:stop`), on every device: the text so far is
   * stored once as the reply, marked `stopped`, and the app's backend is told. Resolves with
   * what became of it (`stopped`, or `finished`/`failed` when it ended first) and the stored
   * message (null when nothing was stored); the chat store follows.
   */
  stopReply(input: CommandInput<"message:stop">): Promise<CommandResults["message:stop"]>;
  history(input: CommandInput<"message:history">): Promise<CommandResults["message:history"]>;
  sync(input: CommandInput<"message:sync">): Promise<CommandResults["message:sync"]>;
  stats(): Promise<CommandResults["user:stats"]>;

  /** Connects again after `signedOut` (e.g. the user signed in), or right now if offline. */
  reconnect(): void;
  /** Tells the client whether the device has network (React Native: from NetInfo). */
  setNetworkAvailable(available: boolean): void;
  /** Disconnects and stops every timer. Pending messages stay in the outbox storage. */
  close(): Promise<void>;
}

type ChatSocket = Socket<ServerToClientEvents, ClientToServerEvents>;
/** socket.io-client's emit with a timeout, untyped: the SDK checks the ack itself. */
type TimedEmitter = {
  timeout(ms: number): {
    emit(event: string, payload: unknown, ack: (err: Error | null, result: unknown) => void): void;
  };
};

const DEFAULT_COMMAND_TIMEOUT_MS = 15_000;
/**
 * How long a streamed reply may wait for text before a delta it received (a delta from another
 * server node arriving first) before the chat is re-snapshotted (`chat:open`).
 */
const STREAM_GAP_WAIT_MS = 500;
const TOKEN_TIMEOUT_MS = 10_000;
/** The most a `connection:resync` is put off (its `spreadMs`, bounded). */
const MAX_RESYNC_SPREAD_MS = 30_000;
/** Attempts of one resynchronisation whose commands fail (UNAVAILABLE, timeouts). */
const RESYNC_ATTEMPTS = 5;
/** Refresh when this fraction of the token's remaining lifetime has passed. */
const REFRESH_AT = 0.7;
/** A connection that lasted this long resets the reconnect backoff. */
const STABLE_CONNECTION_MS = 10_000;
/** Refresh interval for a token whose `exp` cannot be read (no `atob`, not a JWT). */
const BLIND_REFRESH_MS = 40_000;
/** Errors after which a message is never sent again unchanged. */
const permanentSendErrors: ReadonlySet<string> = new Set([
  ErrorCode.NOT_FOUND,
  ErrorCode.INVALID_PAYLOAD,
  ErrorCode.CONFLICT,
  ErrorCode.UNKNOWN_COMMAND,
  ErrorCode.FORBIDDEN,
]);

export function createChatClient(options: ChatClientOptions): ChatClient {
  return new ChatClientImpl(options);
}

class ValueStore<T> extends Store<T> {
  set(value: T): void {
    this.publish(value);
  }
}

class ChatClientImpl implements ChatClient {
  readonly connection = new ValueStore<ConnectionState>("connecting");
  readonly sidebar: SidebarState;
  readonly outbox: OutboxStore;
  readonly ready: Promise<void>;

  private readonly socket: ChatSocket;
  private readonly emitter = new Emitter<ChatClientEvents>();
  private readonly chats = new Map<string, ChatState>();
  private readonly storage: OutboxStorage;
  private readonly getToken: () => Promise<string | null>;
  private readonly commandTimeoutMs: number;
  private readonly syncPageSize: number;

  private readonly entries = new Map<string, OutboxEntry>();
  private readonly waiters = new Map<
    string,
    { resolve: (r: CommandResults["message:send"]) => void; reject: (e: ChatClientError) => void }
  >();
  private readonly outboxStore = new ValueStore<readonly OutboxEntry[]>(Object.freeze([]));
  private readonly flushing = new Set<string>();
  private readonly flushAgain = new Set<string>();

  private readonly timers = new Set<Timer>();
  private readonly sleepers = new Set<() => void>();
  private readonly storageOps = new Set<Promise<unknown>>();
  private refreshTimer: Timer | undefined;
  private refreshing: Promise<boolean> | null = null;
  private detachNetwork: (() => void) | undefined;

  private closed = false;
  private networkUp = true;
  private currentToken: string | null = null;
  private authAttempt = 0;
  private authFailures = 0;
  private connectFailures = 0;
  private connectedAt = 0;
  private closing: ConnectionClosing | null = null;
  private resyncScheduled = false;
  private resyncing: Promise<void> | null = null;
  private resyncAgain = false;

  constructor(options: ChatClientOptions) {
    this.getToken = options.getToken;
    this.storage = options.outboxStorage ?? memoryOutboxStorage();
    this.commandTimeoutMs = options.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;
    this.syncPageSize = Math.min(
      Limits.MAX_PAGE_SIZE,
      Math.max(1, options.syncPageSize ?? Limits.MAX_PAGE_SIZE),
    );
    this.sidebar = new SidebarState((input) => this.command("chat:list", input));
    this.outbox = {
      subscribe: this.outboxStore.subscribe,
      getSnapshot: this.outboxStore.getSnapshot,
      retry: (clientId) => this.retryEntry(clientId),
      discard: (clientId) => this.discardEntry(clientId),
    };

    this.socket = io(options.url, {
      transports: ["websocket"],
      reconnectionDelay: 500,
      reconnectionDelayMax: 5000,
      ...options.socketOptions,
      autoConnect: false,
      forceNew: true,
      auth: (cb) => this.handshakeAuth(cb),
    });
    this.wire();
    this.ready = this.loadOutbox();
    if (options.detectNetwork !== false) this.watchNetwork();
    if (this.networkUp) this.socket.connect();
    else this.setState("offline");
  }

  // -------------------------------------------------------------------------------------------
  // Public API

  get state(): ConnectionState {
    return this.connection.getSnapshot();
  }

  chat(chatId: string): ChatStore {
    return this.chatState(chatId);
  }

  on<K extends keyof ChatClientEvents>(event: K, listener: ChatClientEvents[K]): () => void {
    return this.emitter.on(event, listener);
  }

  listChats(input: CommandInput<"chat:list"> = {}) {
    return this.command("chat:list", input);
  }

  async createChat(input: CommandInput<"chat:create"> = {}) {
    const payload = { ...input, id: input.id ?? randomId() };
    for (let attempt = 0; ; attempt++) {
      try {
        const data = await this.command("chat:create", payload);
        this.sidebar.revive(data.chat.id);
        this.sidebar.upsert(data.chat);
        return data;
      } catch (e) {
        const err = toChatClientError(e, "chat:create");
        // The id makes a retried create return the same chat.
        if (!err.retryable || attempt >= 2 || this.closed) throw err;
        await this.sleep(err.retryAfterMs ?? backoff(attempt));
      }
    }
  }

  async renameChat(input: CommandInput<"chat:rename">) {
    const data = await this.command("chat:rename", input);
    this.sidebar.upsert(data.chat);
    return data;
  }

  async deleteChat(input: CommandInput<"chat:delete">) {
    try {
      const data = await this.command("chat:delete", input);
      this.chatGone(input.chatId);
      return data;
    } catch (e) {
      const err = toChatClientError(e, "chat:delete");
      if (err.code === ErrorCode.NOT_FOUND) this.chatGone(input.chatId);
      throw err;
    }
  }

  async openChat(input: CommandInput<"chat:open">) {
    const state = this.chatState(input.chatId);
    state.beginLoad();
    // Known deleted before the chat was read: found now, it exists again (created anew).
    const deletedBefore = this.sidebar.isDeleted(input.chatId);
    try {
      const data = await this.command("chat:open", input);
      if (deletedBefore) this.sidebar.revive(data.chat.id);
      this.sidebar.upsert(data.chat);
      state.load(data.messages, data.hasMore);
      state.applyStreams(data.streams);
      this.collectConfirmed(state.chatId);
      if (state.hasGap) this.catchUp(state);
      return data;
    } catch (e) {
      const err = toChatClientError(e, "chat:open");
      if (err.code === ErrorCode.NOT_FOUND) this.chatGone(input.chatId);
      else state.loadFailed(err);
      throw err;
    }
  }

  async closeChat(input: CommandInput<"chat:close">) {
    this.chats.get(input.chatId)?.setOpen(false);
    // Rooms belong to a connection: offline, there is nothing to leave.
    if (!this.socket.connected) return { chatId: input.chatId };
    return this.command("chat:close", input);
  }

  sendMessage(input: { chatId: string; content: string; clientId?: string }) {
    const promise = this.enqueue(input);
    // Awaiting is optional: an ignored rejection must not be "unhandled".
    promise.catch(() => {});
    return promise;
  }

  async stopReply(input: CommandInput<"message:stop">) {
    const data = await this.command("message:stop", input);
    const state = this.chats.get(input.chatId);
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

  history(input: CommandInput<"message:history">) {
    return this.command("message:history", input);
  }

  sync(input: CommandInput<"message:sync">) {
    return this.command("message:sync", input);
  }

  stats() {
    return this.command("user:stats", {});
  }

  reconnect(): void {
    if (this.closed) return;
    this.authFailures = 0;
    this.connectFailures = 0;
    if (this.socket.connected) return;
    this.authAttempt++;
    this.setState("connecting");
    this.restartSocket();
  }

  setNetworkAvailable(available: boolean): void {
    if (this.closed || available === this.networkUp) return;
    this.networkUp = available;
    if (!available) {
      if (this.state !== "signedOut") this.setState("offline");
      // Cut the connection now: an idle WebSocket can take a minute to notice on its own.
      this.authAttempt++;
      this.socket.disconnect();
    } else if (this.state !== "signedOut" && !this.socket.connected) {
      this.connectFailures = 0;
      this.restartSocket();
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.clearRefresh();
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    for (const wake of this.sleepers) wake();
    this.sleepers.clear();
    this.detachNetwork?.();
    this.socket.disconnect();
    this.socket.off();
    const closed = new ChatClientError(ClientErrorCode.CLOSED, "The client was closed");
    for (const w of this.waiters.values()) w.reject(closed);
    this.waiters.clear();
    this.setState("offline");
    this.emitter.clear();
    await Promise.allSettled([...this.storageOps]);
  }

  // -------------------------------------------------------------------------------------------
  // Connection

  private wire(): void {
    const s = this.socket;
    s.on("connect", () => this.onConnect());
    s.on("connect_error", (err) => this.onConnectError(err));
    s.on("disconnect", (reason) => this.onDisconnect(reason));
    s.on("connection:closing", (event) => {
      this.closing = event;
      this.emitter.emit("connection:closing", event);
    });
    s.on("connection:resync", (event) => {
      this.emitter.emit("connection:resync", event);
      this.scheduleResync(event?.spreadMs);
    });
    s.on("message:created", ({ message }) => {
      this.sidebar.applyMessage(message);
      const state = this.chats.get(message.chatId);
      if (state) this.ingest(state, [message]);
    });
    s.on("chat:created", (event) => {
      this.sidebar.upsert(event.chat);
      this.emitter.emit("chat:created", event);
    });
    s.on("chat:updated", (event) => {
      this.sidebar.upsert(event.chat);
      this.emitter.emit("chat:updated", event);
    });
    s.on("chat:deleted", (event) => {
      this.chatGone(event.chatId);
      this.emitter.emit("chat:deleted", event);
    });
    s.on("stats:updated", (event) => this.emitter.emit("stats:updated", event));
    s.on("message:streaming", (event) => this.chats.get(event.chatId)?.streamStarted(event));
    s.on("message:delta", (delta) => {
      const state = this.chats.get(delta.chatId);
      if (state?.streamDelta(delta) === "gap") this.awaitStreamGap(state, delta.streamId);
    });
    s.on("message:stopped", (event) => this.chats.get(event.chatId)?.streamStopped(event.streamId));
    s.on("message:failed", (event) =>
      this.chats.get(event.chatId)?.streamFailed(event.streamId, event),
    );
    s.on("chat:generating", (event) => {
      this.sidebar.applyGenerating(event);
      this.emitter.emit("chat:generating", event);
    });
  }

  /**
   * Text of a streamed reply was missed (or another node's delta is late): wait a moment for
   * it, then take a fresh snapshot of the chat (`chat:open`, as after a reconnect).
   */
  private awaitStreamGap(state: ChatState, streamId: string): void {
    if (state.resnapshotting) return;
    state.resnapshotting = true;
    this.later(STREAM_GAP_WAIT_MS, () => {
      if (!state.hasStreamGap(streamId) || !state.open || !this.socket.connected) {
        state.resnapshotting = false;
        return;
      }
      void this.rejoin(state).finally(() => {
        state.resnapshotting = false;
      });
    });
  }

  private setState(next: ConnectionState): void {
    const previous = this.state;
    if (previous === next) return;
    this.connection.set(next);
    this.emitter.emit("state", next, previous);
  }

  /** The handshake's `auth`: a fresh token for every (re)connect. */
  private handshakeAuth(cb: (data: object) => void): void {
    const attempt = ++this.authAttempt;
    this.fetchToken().then(
      (token) => {
        if (this.closed || attempt !== this.authAttempt) return;
        if (token === null) {
          this.signOut("getToken() returned null");
          return;
        }
        this.currentToken = token;
        cb({ token });
      },
      (err) => {
        if (this.closed || attempt !== this.authAttempt) return;
        this.report(err, "getToken");
        this.setState("offline");
        this.socket.disconnect();
        this.scheduleReconnect(backoff(this.connectFailures++, 1000, 30_000));
      },
    );
  }

  private fetchToken(): Promise<string | null> {
    return new Promise<string | null>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new ChatClientError(ClientErrorCode.TIMEOUT, "getToken() timed out")),
        TOKEN_TIMEOUT_MS,
      );
      Promise.resolve()
        .then(() => this.getToken())
        .then(resolve, reject)
        .finally(() => clearTimeout(timer));
    });
  }

  private onConnect(): void {
    if (this.closed) return;
    this.authFailures = 0;
    this.connectedAt = Date.now();
    this.setState("online");
    this.scheduleRefresh();
    void this.afterConnect();
  }

  /**
   * `connection:resync`: at a random moment within `spreadMs` (so that a node's devices do not
   * all query at once), the same catch-up as after a reconnect, on the open connection. Another
   * resync asked for before it starts is the same one; one asked for while it runs runs after it.
   */
  private scheduleResync(spreadMs: unknown): void {
    if (this.resyncScheduled || this.closed) return;
    this.resyncScheduled = true;
    const spread =
      typeof spreadMs === "number" && spreadMs > 0 ? Math.min(spreadMs, MAX_RESYNC_SPREAD_MS) : 0;
    this.later(Math.random() * spread, () => {
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
          if (this.closed || !this.socket.connected || this.state === "signedOut") return;
          if (await this.resyncOnce()) break;
          if (attempt >= RESYNC_ATTEMPTS) break;
          await this.sleep(backoff(attempt - 1, 500, 5000));
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
          this.report(e, "resync sidebar");
          return false;
        },
      ),
      ...[...this.chats.values()].filter((state) => state.open).map((state) => this.rejoin(state)),
    ]);
    return results.every(Boolean);
  }

  /** After every (re)connect: the sidebar, then rejoin and catch up open chats, then the outbox. */
  private async afterConnect(): Promise<void> {
    await this.ready;
    if (!this.socket.connected) return;
    const tasks: Promise<unknown>[] = [
      this.sidebar.refresh().catch((e) => this.report(e, "sidebar")),
    ];
    for (const state of this.chats.values()) if (state.open) tasks.push(this.rejoin(state));
    for (const chatId of new Set([...this.entries.values()].map((e) => e.chatId))) {
      void this.flush(chatId);
    }
    await Promise.all(tasks);
  }

  private onConnectError(err: Error): void {
    if (this.closed || this.state === "signedOut") return;
    const code = (err as Error & { data?: { code?: unknown } }).data?.code;
    if (typeof code !== "string") {
      // A network failure: socket.io-client retries by itself.
      this.setState("offline");
      if (!this.socket.active)
        this.scheduleReconnect(backoff(this.connectFailures++, 1000, 30_000));
      return;
    }
    switch (code) {
      case ConnectErrorCode.TOKEN_EXPIRED:
      case ConnectErrorCode.TOKEN_INVALID: {
        // A cached token may be stale: fetch a fresh one (a few times for an expired one).
        this.authFailures++;
        if (this.authFailures > (code === ConnectErrorCode.TOKEN_EXPIRED ? 3 : 1)) {
          this.signOut(`The server refused the token (${code})`);
          return;
        }
        this.setState("reauthenticating");
        this.scheduleReconnect(backoff(this.authFailures - 1, 300, 3000));
        return;
      }
      case ConnectErrorCode.TOKEN_MISSING:
      case ConnectErrorCode.TOKEN_WRONG_PARTY:
        this.signOut(`The server refused the token (${code})`);
        return;
      case ConnectErrorCode.ORIGIN_NOT_ALLOWED:
        // The page's origin is not allowed: a configuration error no retry can fix.
        this.signOut(`The server refused this page's origin (${code})`);
        return;
      default: {
        this.setState("offline");
        // RATE_LIMITED says when a new attempt may succeed; earlier ones would only count.
        const hint = (err as Error & { data?: { retryAfterMs?: unknown } }).data?.retryAfterMs;
        const wait = backoff(this.connectFailures++, 1000, 30_000);
        this.scheduleReconnect(typeof hint === "number" ? Math.max(wait, hint) : wait);
      }
    }
  }

  private onDisconnect(reason: Socket.DisconnectReason): void {
    this.clearRefresh();
    // The reconnect backoff starts over only after a connection that lasted: a server that
    // drops every new connection is not hammered.
    if (Date.now() - this.connectedAt > STABLE_CONNECTION_MS) this.connectFailures = 0;
    const closing = this.closing;
    this.closing = null;
    if (this.closed || this.state === "signedOut") return;
    // Our own disconnects (offline, sign-out, close) set the state themselves.
    if (reason === "io client disconnect") return;
    if (reason === "io server disconnect") {
      if (closing && !closing.reconnect) {
        this.signOut(closing.message);
        return;
      }
      // socket.io-client does not reconnect after a server-side disconnect: we do.
      const expired = closing?.reason === DisconnectReason.TOKEN_EXPIRED;
      this.setState(expired ? "reauthenticating" : "offline");
      const delay =
        closing?.reason === DisconnectReason.SERVER_SHUTDOWN
          ? 250 + Math.random() * 1000
          : backoff(this.connectFailures++, 200, 5000);
      this.scheduleReconnect(delay);
      return;
    }
    this.setState("offline");
  }

  private signOut(reason: string): void {
    if (this.state === "signedOut" || this.closed) return;
    this.clearRefresh();
    this.authAttempt++;
    this.setState("signedOut");
    this.socket.disconnect();
    this.report(new ChatClientError(ClientErrorCode.SIGNED_OUT, reason), "auth");
  }

  /** Connects now, dropping any connection attempt in progress. */
  private restartSocket(): void {
    this.socket.disconnect();
    this.socket.connect();
  }

  private scheduleReconnect(ms: number): void {
    this.later(ms, () => {
      if (this.closed || this.state === "signedOut" || !this.networkUp) return;
      if (this.socket.connected || this.socket.active) return;
      this.socket.connect();
    });
  }

  private watchNetwork(): void {
    if (typeof window === "undefined" || typeof window.addEventListener !== "function") return;
    const offline = () => this.setNetworkAvailable(false);
    const online = () => this.setNetworkAvailable(true);
    window.addEventListener("offline", offline);
    window.addEventListener("online", online);
    if (typeof navigator !== "undefined" && navigator.onLine === false) this.networkUp = false;
    this.detachNetwork = () => {
      window.removeEventListener("offline", offline);
      window.removeEventListener("online", online);
    };
  }

  // -------------------------------------------------------------------------------------------
  // Token refresh (in-band, `auth:refresh`)

  private scheduleRefresh(): void {
    this.clearRefresh();
    if (!this.currentToken) return;
    const times = tokenTimes(this.currentToken);
    const delay = times ? refreshDelay(times, Date.now(), REFRESH_AT) : BLIND_REFRESH_MS;
    this.refreshTimer = setTimeout(() => {
      this.refreshTimer = undefined;
      void this.refreshToken();
    }, delay);
  }

  private clearRefresh(): void {
    if (this.refreshTimer !== undefined) clearTimeout(this.refreshTimer);
    this.refreshTimer = undefined;
  }

  /** Sends a fresh token over the open socket; true when the server took it. */
  private refreshToken(): Promise<boolean> {
    this.refreshing ??= this.doRefresh().finally(() => {
      this.refreshing = null;
    });
    return this.refreshing;
  }

  private async doRefresh(): Promise<boolean> {
    let refused = 0;
    for (let attempt = 0; ; attempt++) {
      if (this.closed || !this.socket.connected || this.state === "signedOut") return false;
      try {
        const token = await this.fetchToken();
        if (token === null) {
          this.signOut("getToken() returned null");
          return false;
        }
        if (!this.socket.connected) return false;
        const data = await this.emitCommand("auth:refresh", { token });
        this.currentToken = token;
        this.scheduleRefresh();
        this.emitter.emit("auth:refreshed", data);
        return true;
      } catch (e) {
        const err = toChatClientError(e, "auth:refresh");
        if (
          err.code === ErrorCode.FORBIDDEN ||
          (err.code === ErrorCode.UNAUTHORIZED && ++refused > 1)
        ) {
          this.signOut(err.message);
          return false;
        }
        if (err.code === ClientErrorCode.DISCONNECTED) return false;
        this.report(err, "auth:refresh");
        await this.sleep(backoff(attempt, 500, 5000));
      }
    }
  }

  // -------------------------------------------------------------------------------------------
  // Commands

  private emitCommand<C extends CommandName>(
    name: C,
    payload: CommandInput<C>,
  ): Promise<CommandResults[C]> {
    return new Promise((resolve, reject) => {
      (this.socket as unknown as TimedEmitter)
        .timeout(this.commandTimeoutMs)
        .emit(name, payload, (err, result) => {
          if (err) {
            const timedOut = /timed out/i.test(err.message);
            reject(
              new ChatClientError(
                timedOut ? ClientErrorCode.TIMEOUT : ClientErrorCode.DISCONNECTED,
                timedOut
                  ? `No answer to ${name} within ${this.commandTimeoutMs} ms`
                  : `The connection dropped before ${name} was answered`,
                { command: name, cause: err },
              ),
            );
            return;
          }
          const ack = result as Ack<CommandResults[C]> | undefined;
          if (ack?.ok === true) resolve(ack.data);
          else if (ack?.ok === false) reject(ChatClientError.fromProtocol(ack.error, name));
          else reject(new ChatClientError(ErrorCode.INTERNAL, "Malformed ack", { command: name }));
        });
    });
  }

  /** A command, with one in-band refresh and retry when the socket's token has expired. */
  private async command<C extends CommandName>(
    name: C,
    payload: CommandInput<C>,
  ): Promise<CommandResults[C]> {
    if (this.closed) {
      throw new ChatClientError(ClientErrorCode.CLOSED, "The client was closed", { command: name });
    }
    if (this.state === "signedOut") {
      throw new ChatClientError(ClientErrorCode.SIGNED_OUT, "Signed out", { command: name });
    }
    try {
      return await this.emitCommand(name, payload);
    } catch (e) {
      if (e instanceof ChatClientError && e.code === ErrorCode.TOKEN_EXPIRED) {
        if (await this.refreshToken()) return this.emitCommand(name, payload);
      }
      throw e;
    }
  }

  // -------------------------------------------------------------------------------------------
  // Chats

  private chatState(chatId: string): ChatState {
    let state = this.chats.get(chatId);
    if (!state) {
      state = new ChatState(chatId, {
        pending: (id) => this.pendingFor(id),
        loadOlder: (s, limit) => this.loadOlder(s, limit),
      });
      this.chats.set(chatId, state);
    }
    return state;
  }

  private ingest(state: ChatState, messages: readonly ChatMessage[]): void {
    const appended = state.ingest(messages);
    for (const message of appended) this.emitter.emit("message:created", { message });
    if (appended.length) this.collectConfirmed(state.chatId);
    if (state.hasGap && state.open) this.catchUp(state);
  }

  /**
   * After a reconnect (or a resync): join the chat's stream again, then fetch what was missed.
   * False when it failed (the chat being gone is not a failure: it turns `deleted`).
   */
  private async rejoin(state: ChatState): Promise<boolean> {
    try {
      if (state.status !== "ready") {
        await this.openChat({ chatId: state.chatId });
        return true;
      }
      const data = await this.command("chat:open", { chatId: state.chatId, limit: 1 });
      this.sidebar.upsert(data.chat);
      this.ingest(state, data.messages);
      if (data.chat.lastSeq > state.lastSeq) await this.syncChat(state);
      // After the catch-up, so that a reply stored meanwhile replaces its streamed item.
      state.applyStreams(data.streams);
      return true;
    } catch (e) {
      const err = toChatClientError(e, "chat:open");
      if (err.code === ErrorCode.NOT_FOUND) {
        this.chatGone(state.chatId);
        return true;
      }
      this.report(err, `rejoin ${state.chatId}`);
      return false;
    }
  }

  private catchUp(state: ChatState): void {
    this.syncChat(state).catch((e) => {
      const err = toChatClientError(e, "message:sync");
      if (err.code === ErrorCode.NOT_FOUND) this.chatGone(state.chatId);
      else this.report(err, `sync ${state.chatId}`);
    });
  }

  /** `message:sync` from the last contiguous seq while `hasMore`; one run per chat at a time. */
  private syncChat(state: ChatState): Promise<void> {
    if (state.syncing) {
      state.syncAgain = true;
      return state.syncing;
    }
    const run = async () => {
      let progressed = true;
      do {
        state.syncAgain = false;
        progressed = false;
        for (;;) {
          if (!this.socket.connected || state.status !== "ready") return;
          const after = state.lastSeq;
          const page = await this.command("message:sync", {
            chatId: state.chatId,
            afterSeq: after,
            limit: this.syncPageSize,
          });
          this.ingest(state, page.messages);
          if (state.lastSeq > after) progressed = true;
          if (!page.hasMore || state.lastSeq <= after) break;
        }
      } while (state.syncAgain && progressed);
    };
    state.syncing = run().finally(() => {
      state.syncing = null;
    });
    return state.syncing;
  }

  private async loadOlder(state: ChatState, limit?: number): Promise<void> {
    if (state.status !== "ready" || !state.hasMoreBefore) return;
    const before = state.firstSeq;
    if (before === undefined) return;
    const page = await this.command("message:history", {
      chatId: state.chatId,
      before,
      ...(limit ? { limit } : {}),
    });
    state.prepend(page.messages, page.hasMore);
  }

  /** A chat was deleted (here, on another device, or found missing). */
  private chatGone(chatId: string): void {
    this.sidebar.remove(chatId);
    this.chats.get(chatId)?.markDeleted();
    const gone = new ChatClientError(ErrorCode.NOT_FOUND, "The chat was deleted");
    for (const entry of [...this.entries.values()]) {
      if (entry.chatId !== chatId) continue;
      this.entries.delete(entry.clientId);
      this.track(this.storage.delete(entry.clientId));
      this.settle(entry.clientId, gone);
    }
    this.outboxChanged(chatId);
  }

  // -------------------------------------------------------------------------------------------
  // Outbox

  private async loadOutbox(): Promise<void> {
    let records: OutboxRecord[] = [];
    try {
      records = await this.storage.getAll();
    } catch (e) {
      this.report(e, "outbox storage");
    }
    records.sort((a, b) => (a.createdAt < b.createdAt ? -1 : a.createdAt > b.createdAt ? 1 : 0));
    const chats = new Set<string>();
    for (const r of records) {
      if (this.entries.has(r.clientId)) continue;
      this.entries.set(
        r.clientId,
        Object.freeze({
          clientId: r.clientId,
          chatId: r.chatId,
          content: r.content,
          createdAt: r.createdAt,
          status: r.status,
          attempts: 0,
          error: r.error ? Object.freeze({ ...r.error }) : null,
          message: null,
        }),
      );
      chats.add(r.chatId);
    }
    for (const chatId of chats) this.outboxChanged(chatId);
  }

  private async enqueue(input: {
    chatId: string;
    content: string;
    clientId?: string;
  }): Promise<CommandResults["message:send"]> {
    if (this.closed) throw new ChatClientError(ClientErrorCode.CLOSED, "The client was closed");
    if (this.state === "signedOut")
      throw new ChatClientError(ClientErrorCode.SIGNED_OUT, "Signed out");
    const problem =
      input.content.trim().length === 0
        ? "must not be blank"
        : input.content.length > Limits.MAX_MESSAGE_CHARS
          ? `must be at most ${Limits.MAX_MESSAGE_CHARS} characters`
          : undefined;
    if (problem) {
      throw new ChatClientError(ErrorCode.INVALID_PAYLOAD, "The message is invalid", {
        details: [{ path: "content", message: problem }],
        command: "message:send",
      });
    }
    const clientId = input.clientId ?? randomId();
    const waiting = new Promise<CommandResults["message:send"]>((resolve, reject) => {
      const previous = this.waiters.get(clientId);
      this.waiters.set(clientId, {
        resolve: (r) => {
          previous?.resolve(r);
          resolve(r);
        },
        reject: (e) => {
          previous?.reject(e);
          reject(e);
        },
      });
    });
    if (!this.entries.has(clientId)) {
      const entry: OutboxEntry = Object.freeze({
        clientId,
        chatId: input.chatId,
        content: input.content,
        createdAt: new Date().toISOString(),
        status: "pending",
        attempts: 0,
        error: null,
        message: null,
      });
      this.entries.set(clientId, entry);
      this.outboxChanged(entry.chatId, entry);
      try {
        await this.track(this.storage.set(toRecord(entry)));
      } catch (e) {
        this.report(e, "outbox storage");
      }
    }
    void this.flush(input.chatId);
    return waiting;
  }

  /** Sends a chat's pending entries one at a time, in order, until none is left or offline. */
  private async flush(chatId: string): Promise<void> {
    if (this.flushing.has(chatId)) {
      this.flushAgain.add(chatId);
      return;
    }
    this.flushing.add(chatId);
    try {
      await this.ready;
      for (let failures = 0; ; ) {
        if (this.closed || !this.socket.connected || this.state === "signedOut") return;
        const entry = this.nextPending(chatId);
        if (!entry) return;
        this.updateEntry(entry.clientId, { status: "sending", attempts: entry.attempts + 1 });
        try {
          const data = await this.command("message:send", {
            chatId,
            clientId: entry.clientId,
            content: entry.content,
          });
          failures = 0;
          this.confirm(entry.clientId, data);
        } catch (e) {
          const err = toChatClientError(e, "message:send");
          if (!this.entries.has(entry.clientId)) continue;
          if (permanentSendErrors.has(err.code)) {
            this.fail(entry.clientId, err);
            continue;
          }
          this.updateEntry(entry.clientId, {
            status: "pending",
            error: { code: err.code, message: err.message },
          });
          if (!this.socket.connected) return; // resent after the reconnect
          await this.sleep(err.retryAfterMs ?? backoff(failures++));
        }
      }
    } finally {
      this.flushing.delete(chatId);
      if (this.flushAgain.delete(chatId)) void this.flush(chatId);
    }
  }

  private nextPending(chatId: string): OutboxEntry | undefined {
    return this.pendingFor(chatId).find((e) => e.status === "pending");
  }

  private confirm(clientId: string, data: CommandResults["message:send"]): void {
    const entry = this.entries.get(clientId);
    if (!entry) return;
    const message = data.message;
    const confirmed: OutboxEntry = Object.freeze({
      ...entry,
      status: "confirmed" as const,
      error: null,
      message,
    });
    this.entries.set(clientId, confirmed);
    this.track(this.storage.delete(clientId)).catch((e) => this.report(e, "outbox storage"));
    const waiter = this.waiters.get(clientId);
    this.waiters.delete(clientId);
    waiter?.resolve(data);
    this.sidebar.applyMessage(message);
    this.outboxChanged(entry.chatId, confirmed);
    const state = this.chats.get(message.chatId);
    if (state) this.ingest(state, [message]);
    this.collectConfirmed(entry.chatId);
  }

  private fail(clientId: string, err: ChatClientError): void {
    const entry = this.entries.get(clientId);
    if (!entry) return;
    const failed: OutboxEntry = Object.freeze({
      ...entry,
      status: "failed" as const,
      error: Object.freeze({ code: err.code, message: err.message }),
    });
    this.entries.set(clientId, failed);
    this.track(this.storage.set(toRecord(failed))).catch((e) => this.report(e, "outbox storage"));
    this.settle(clientId, err);
    this.outboxChanged(entry.chatId, failed);
  }

  private settle(clientId: string, err: ChatClientError): void {
    const waiter = this.waiters.get(clientId);
    this.waiters.delete(clientId);
    waiter?.reject(err);
  }

  private updateEntry(clientId: string, patch: Partial<OutboxEntry>): void {
    const entry = this.entries.get(clientId);
    if (!entry) return;
    const next = Object.freeze({ ...entry, ...patch });
    this.entries.set(clientId, next);
    this.outboxChanged(entry.chatId, next);
  }

  private retryEntry(clientId: string): void {
    const entry = this.entries.get(clientId);
    if (entry?.status !== "failed") return;
    const next: OutboxEntry = Object.freeze({
      ...entry,
      status: "pending",
      attempts: 0,
      error: null,
    });
    this.entries.set(clientId, next);
    this.track(this.storage.set(toRecord(next))).catch((e) => this.report(e, "outbox storage"));
    this.outboxChanged(entry.chatId, next);
    void this.flush(entry.chatId);
  }

  private async discardEntry(clientId: string): Promise<void> {
    const entry = this.entries.get(clientId);
    if (!entry || entry.status === "confirmed") return;
    this.entries.delete(clientId);
    this.settle(clientId, new ChatClientError(ClientErrorCode.CANCELLED, "Discarded"));
    this.outboxChanged(entry.chatId);
    await this.track(this.storage.delete(clientId));
  }

  /** Drops confirmed entries once their message is in the chat's list (or nobody shows it). */
  private collectConfirmed(chatId: string): void {
    const state = this.chats.get(chatId);
    let changed = false;
    for (const entry of [...this.entries.values()]) {
      if (entry.chatId !== chatId || entry.status !== "confirmed" || !entry.message) continue;
      // Kept (shown as confirmed) only while its message waits behind a gap in an open chat.
      const waiting =
        state?.open === true && state.status === "ready" && entry.message.seq > state.lastSeq;
      if (!waiting) {
        this.entries.delete(entry.clientId);
        changed = true;
      }
    }
    if (changed) this.outboxChanged(chatId);
  }

  /** Entries of one chat that are not confirmed-and-shown, in send order. */
  private pendingFor(chatId: string): OutboxEntry[] {
    return [...this.entries.values()]
      .filter((e) => e.chatId === chatId)
      .sort((a, b) => (a.createdAt < b.createdAt ? -1 : a.createdAt > b.createdAt ? 1 : 0));
  }

  private outboxChanged(chatId: string, entry?: OutboxEntry): void {
    const all = [...this.entries.values()]
      .filter((e) => e.status !== "confirmed")
      .sort((a, b) => (a.createdAt < b.createdAt ? -1 : a.createdAt > b.createdAt ? 1 : 0));
    const prev = this.outboxStore.getSnapshot();
    if (!sameItems(prev, all)) this.outboxStore.set(Object.freeze(all));
    this.chats.get(chatId)?.rebuild();
    if (entry) this.emitter.emit("outbox", { entry });
  }

  // -------------------------------------------------------------------------------------------
  // Plumbing

  private report(err: unknown, context: string): void {
    const error =
      err instanceof ChatClientError
        ? err
        : new ChatClientError(
            ErrorCode.INTERNAL,
            err instanceof Error ? err.message : String(err),
            {
              cause: err,
            },
          );
    this.emitter.emit("error", { error, context });
  }

  private later(ms: number, fn: () => void): void {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      fn();
    }, ms);
    this.timers.add(timer);
  }

  private sleep(ms: number): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise((resolve) => {
      const wake = () => {
        this.sleepers.delete(wake);
        resolve();
      };
      this.sleepers.add(wake);
      this.later(ms, wake);
    });
  }

  private track<T>(op: Promise<T>): Promise<T> {
    this.storageOps.add(op);
    const done = () => this.storageOps.delete(op);
    op.then(done, done);
    return op;
  }
}

function toRecord(entry: OutboxEntry): OutboxRecord {
  return {
    clientId: entry.clientId,
    chatId: entry.chatId,
    content: entry.content,
    createdAt: entry.createdAt,
    status: entry.status === "failed" ? "failed" : "pending",
    ...(entry.error && entry.status === "failed" ? { error: { ...entry.error } } : {}),
  };
}

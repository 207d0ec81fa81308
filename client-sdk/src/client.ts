/**
 * The chat client: one Socket.IO connection per client, authenticated with a Clerk-style
 * `getToken()`, with typed commands, live stores, catch-up after every reconnect and an outbox
 * that delivers every sent message exactly once. This file is the public API and a thin facade
 * over `connection.ts` (socket, tokens, the reconnect loop, the state machine), `commands.ts`,
 * `chats.ts` (live stores and catch-up) and `outbox.ts` (the queue and its storage).
 */

import type {
  ChatMessage,
  CommandInput,
  CommandResults,
  ConnectionClosing,
  ConnectionResync,
  ServerToClientEvents,
} from "@chat-backend/protocol";
import { ErrorCode } from "@chat-backend/protocol";
import type { ManagerOptions, SocketOptions } from "socket.io-client";
import { Chats } from "./chats.js";
import { Commands } from "./commands.js";
import { Connection, type ConnectionState, type ConnectionStatus } from "./connection.js";
import { ChatClientError } from "./errors.js";
import {
  memoryOutboxStorage,
  Outbox,
  type OutboxEntry,
  type OutboxStorage,
  type OutboxStore,
} from "./outbox.js";
import type { ChatStore, ReadableStore, SidebarStore } from "./stores.js";
import { Emitter } from "./util.js";

export { ConnectionCode, type ConnectionState, type ConnectionStatus } from "./connection.js";
export type { OutboxStore } from "./outbox.js";

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
  /**
   * Passed to socket.io-client's `io()`. socket.io-client's own reconnection is off (the SDK
   * runs the one reconnect loop); `reconnectionDelay` and `reconnectionDelayMax` (default 500
   * and 5 000 ms) bound that loop's backoff after a failed or dropped connection. `reconnection`,
   * `auth`, `autoConnect` and `forceNew` are the SDK's.
   */
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
  state: (state: ConnectionState, previous: ConnectionState, status: ConnectionStatus) => void;
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

export interface ChatClient {
  /** The connection state, as a store (`useSyncExternalStore(c.subscribe, c.getSnapshot)`). */
  readonly connection: ReadableStore<ConnectionState>;
  /** Same as `connection.getSnapshot()`. */
  readonly state: ConnectionState;
  /** The connection state with its reason (`{ state, code, message }`), as a store. */
  readonly connectionStatus: ReadableStore<ConnectionStatus>;
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
  /**
   * Opens a chat: loads its latest page into `chat(chatId)` and keeps it live and caught up.
   * Opens are counted: every call (each component showing the chat) is matched by one
   * `closeChat`, and the chat stays live until the last one is closed.
   */
  openChat(input: CommandInput<"chat:open">): Promise<CommandResults["chat:open"]>;
  /**
   * Undoes one `openChat`. The last close of a chat leaves its live stream (`chat:close`);
   * earlier ones resolve at once and change nothing.
   */
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

const DEFAULT_COMMAND_TIMEOUT_MS = 15_000;

export function createChatClient(options: ChatClientOptions): ChatClient {
  return new ChatClientImpl(options);
}

/**
 * The facade: wires the connection (socket, tokens, the reconnect loop), the commands, the
 * chat coordination (sidebar and chat stores) and the outbox, and turns their events into the
 * client's.
 */
class ChatClientImpl implements ChatClient {
  readonly connection: ReadableStore<ConnectionState>;
  readonly connectionStatus: ReadableStore<ConnectionStatus>;
  readonly sidebar: SidebarStore;
  readonly outbox: OutboxStore;
  readonly ready: Promise<void>;

  private readonly link: Connection;
  private readonly commands: Commands;
  private readonly chats: Chats;
  private readonly queue: Outbox;
  private readonly emitter = new Emitter<ChatClientEvents>();

  constructor(options: ChatClientOptions) {
    this.link = new Connection({
      url: options.url,
      getToken: options.getToken,
      socketOptions: options.socketOptions,
      commandTimeoutMs: options.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS,
      detectNetwork: options.detectNetwork !== false,
    });
    const commands = new Commands(this.link);
    this.commands = commands;
    const report = (err: unknown, context: string) => this.report(err, context);
    this.chats = new Chats(
      this.link,
      commands,
      {
        created: (message) => this.emitter.emit("message:created", { message }),
        relay: (event, payload) =>
          this.emitter.emit(event, ...([payload] as Parameters<ChatClientEvents[typeof event]>)),
        report,
      },
      { syncPageSize: options.syncPageSize },
    );
    this.queue = new Outbox(options.outboxStorage ?? memoryOutboxStorage(), {
      check: () => commands.check("message:send"),
      canSend: () => this.link.connected && !this.link.signedOut,
      send: (input) => commands.send("message:send", input),
      confirmed: (message) => this.chats.confirmed(message),
      changed: (chatId, entry) => {
        this.chats.known(chatId)?.rebuild();
        if (entry) this.emitter.emit("outbox", { entry });
      },
      awaiting: (chatId, seq) => this.chats.awaiting(chatId, seq),
      report,
    });
    this.chats.attach(this.queue);

    this.connection = this.link.state;
    this.connectionStatus = this.link.status;
    this.sidebar = this.chats.sidebar;
    this.outbox = this.queue;
    this.ready = this.queue.ready;

    this.link.on("status", (status, previous) => {
      if (status.state !== previous.state) {
        this.emitter.emit("state", status.state, previous.state, status);
      }
    });
    this.link.on("connected", () => void this.afterConnect());
    this.link.on("connection:closing", (event) => this.emitter.emit("connection:closing", event));
    this.link.on("auth:refreshed", (event) => this.emitter.emit("auth:refreshed", event));
    this.link.on("error", report);
    this.link.start();
  }

  get state(): ConnectionState {
    return this.link.state.getSnapshot();
  }

  chat(chatId: string): ChatStore {
    return this.chats.chat(chatId);
  }

  on<K extends keyof ChatClientEvents>(event: K, listener: ChatClientEvents[K]): () => void {
    return this.emitter.on(event, listener);
  }

  listChats(input: CommandInput<"chat:list"> = {}) {
    return this.commands.send("chat:list", input);
  }

  createChat(input: CommandInput<"chat:create"> = {}) {
    return this.chats.create(input);
  }

  renameChat(input: CommandInput<"chat:rename">) {
    return this.chats.rename(input);
  }

  deleteChat(input: CommandInput<"chat:delete">) {
    return this.chats.delete(input);
  }

  openChat(input: CommandInput<"chat:open">) {
    return this.chats.open(input);
  }

  closeChat(input: CommandInput<"chat:close">) {
    return this.chats.leave(input);
  }

  sendMessage(input: { chatId: string; content: string; clientId?: string }) {
    const promise = this.queue.enqueue(input);
    // Awaiting is optional: an ignored rejection must not be "unhandled".
    promise.catch(() => {});
    return promise;
  }

  stopReply(input: CommandInput<"message:stop">) {
    return this.chats.stopReply(input);
  }

  history(input: CommandInput<"message:history">) {
    return this.commands.send("message:history", input);
  }

  sync(input: CommandInput<"message:sync">) {
    return this.commands.send("message:sync", input);
  }

  stats() {
    return this.commands.send("user:stats", {});
  }

  reconnect(): void {
    this.link.reconnect();
  }

  setNetworkAvailable(available: boolean): void {
    this.link.setNetworkAvailable(available);
  }

  async close(): Promise<void> {
    if (this.link.closed) return;
    this.chats.close();
    const flushed = this.queue.close();
    this.link.close();
    this.emitter.clear();
    await flushed;
  }

  /** After every (re)connect: the sidebar, rejoin and catch up open chats, then the outbox. */
  private async afterConnect(): Promise<void> {
    await this.ready;
    if (!this.link.connected) return;
    const catchingUp = this.chats.afterConnect();
    this.queue.flushAll();
    await catchingUp;
  }

  private report(err: unknown, context: string): void {
    const error =
      err instanceof ChatClientError
        ? err
        : new ChatClientError(
            ErrorCode.INTERNAL,
            err instanceof Error ? err.message : String(err),
            { cause: err },
          );
    this.emitter.emit("error", { error, context });
  }
}

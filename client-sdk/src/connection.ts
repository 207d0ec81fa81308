/**
 * The connection: the one object that owns the Socket.IO socket, the token policy (a fresh
 * `getToken()` for every connection attempt, in-band `auth:refresh` before expiry) and the one
 * reconnect loop. socket.io-client's own reconnection is off: every attempt, after a failure, a
 * drop, a refused handshake, the network coming back or `reconnect()`, is started here, by one
 * timer, with exponential backoff and full jitter. Every state change carries a reason: a code
 * and a message (`ConnectionStatus`).
 */
import type {
  ClientToServerEvents,
  CommandInput,
  CommandName,
  CommandResults,
  ConnectionClosing,
  ServerToClientEvents,
} from "@chat-backend/protocol";
import { ConnectErrorCode, DisconnectReason, ErrorCode } from "@chat-backend/protocol";
import { io, type ManagerOptions, type Socket, type SocketOptions } from "socket.io-client";
import { emitCommand, type TimedEmitter } from "./commands.js";
import { ChatClientError, ClientErrorCode, toChatClientError } from "./errors.js";
import {
  backoff,
  Emitter,
  refreshDelay,
  type Timer,
  Timers,
  tokenTimes,
  ValueStore,
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

/**
 * The SDK's own codes of `ConnectionStatus` (beside the server's: a `ConnectErrorCode` of a
 * refused handshake, a `DisconnectReason` of `connection:closing`, an `ErrorCode` of a refused
 * `auth:refresh`).
 */
export const ConnectionCode = {
  /** The client was just created. */
  STARTING: "STARTING",
  /** Online. */
  CONNECTED: "CONNECTED",
  /** `reconnect()` was called. */
  RECONNECT_REQUESTED: "RECONNECT_REQUESTED",
  /** The device has no network (`offline` event, `navigator.onLine`, `setNetworkAvailable(false)`). */
  NETWORK_UNAVAILABLE: "NETWORK_UNAVAILABLE",
  /** The connection failed or dropped (network, server unreachable). */
  TRANSPORT_ERROR: "TRANSPORT_ERROR",
  /** `getToken()` threw or timed out. */
  TOKEN_UNAVAILABLE: "TOKEN_UNAVAILABLE",
  /** `getToken()` returned null (signed out). */
  NO_TOKEN: "NO_TOKEN",
  /** `close()` was called. */
  CLOSED: "CLOSED",
} as const;

/**
 * Why the connection is in its state, with every state change (centrifuge-js style): `code`
 * is one of `ConnectionCode`, a `ConnectErrorCode` of a refused handshake, a `DisconnectReason`
 * of `connection:closing`, or an `ErrorCode` of a refused `auth:refresh`; `message` is for
 * people.
 */
export interface ConnectionStatus {
  readonly state: ConnectionState;
  readonly code: string;
  readonly message: string;
}

export interface ConnectionOptions {
  url: string;
  getToken: () => Promise<string | null>;
  /**
   * Passed to `io()`. `reconnectionDelay` and `reconnectionDelayMax` bound the SDK's loop's
   * backoff after a dropped or failed connection (default 500 and 5 000 ms); `reconnection`,
   * `auth`, `autoConnect` and `forceNew` are the SDK's.
   */
  socketOptions?: Partial<ManagerOptions & SocketOptions> | undefined;
  commandTimeoutMs: number;
  /** Follow `window`'s `online`/`offline` events and `navigator.onLine`. */
  detectNetwork: boolean;
}

export interface ConnectionEvents {
  /** The status changed (its state, or only its reason). */
  status: (status: ConnectionStatus, previous: ConnectionStatus) => void;
  /** Connected and authenticated (each time). */
  connected: () => void;
  "connection:closing": (event: ConnectionClosing) => void;
  "auth:refreshed": (event: CommandResults["auth:refresh"]) => void;
  /** A background failure (getToken, refresh, the sign-out reason). */
  error: (error: unknown, context: string) => void;
}

type ChatSocket = Socket<ServerToClientEvents, ClientToServerEvents>;

const TOKEN_TIMEOUT_MS = 10_000;
/** Refresh when this fraction of the token's remaining lifetime has passed. */
const REFRESH_AT = 0.7;
/** Refresh interval for a token whose `exp` cannot be read (no `atob`, not a JWT). */
const BLIND_REFRESH_MS = 40_000;
/** A connection that lasted this long resets the reconnect backoff. */
const STABLE_CONNECTION_MS = 10_000;
/** Backoff after a refused handshake or a failing `getToken()`. */
const REFUSED_BASE_MS = 1000;
const REFUSED_MAX_MS = 30_000;

export class Connection {
  /** The status with its reason; a new value with every change. */
  readonly status = new ValueStore<ConnectionStatus>(
    Object.freeze({ state: "connecting", code: ConnectionCode.STARTING, message: "Connecting" }),
  );
  /** The state alone (changes only when the state does). */
  readonly state = new ValueStore<ConnectionState>("connecting");

  private readonly socket: ChatSocket;
  private readonly events = new Emitter<ConnectionEvents>();
  private readonly timers = new Timers();
  private readonly getToken: () => Promise<string | null>;
  private readonly commandTimeoutMs: number;
  private readonly retryBaseMs: number;
  private readonly retryMaxMs: number;

  private isClosed = false;
  private networkUp = true;
  private token: string | null = null;
  /** The current attempt; an older attempt's token that arrives late is dropped. */
  private attempt = 0;
  /** The loop's one timer: the next attempt. */
  private retryTimer: Timer | undefined;
  private failures = 0;
  private authFailures = 0;
  private connectedAt = 0;
  private closing: ConnectionClosing | null = null;
  private refreshTimer: Timer | undefined;
  private refreshing: Promise<boolean> | null = null;
  private detachNetwork: (() => void) | undefined;

  constructor(options: ConnectionOptions) {
    this.getToken = options.getToken;
    this.commandTimeoutMs = options.commandTimeoutMs;
    const socketOptions = options.socketOptions ?? {};
    this.retryBaseMs = Math.max(1, socketOptions.reconnectionDelay ?? 500);
    this.retryMaxMs = Math.max(this.retryBaseMs, socketOptions.reconnectionDelayMax ?? 5000);
    this.socket = io(options.url, {
      transports: ["websocket"],
      ...socketOptions,
      reconnection: false,
      autoConnect: false,
      forceNew: true,
    });
    this.socket.on("connect", () => this.onConnect());
    this.socket.on("connect_error", (err) => this.onConnectError(err));
    this.socket.on("disconnect", (reason) => this.onDisconnect(reason));
    this.socket.on("connection:closing", (event) => {
      this.closing = event;
      this.events.emit("connection:closing", event);
    });
    if (options.detectNetwork) this.watchNetwork();
  }

  /** Makes the first attempt (or goes `offline` when the device has no network). */
  start(): void {
    if (this.networkUp) void this.connectNow();
    else
      this.transition("offline", ConnectionCode.NETWORK_UNAVAILABLE, "The device has no network");
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /** Signed out: nothing is retried until `reconnect()`. */
  get signedOut(): boolean {
    return this.state.getSnapshot() === "signedOut";
  }

  /** Connected and authenticated right now. */
  get connected(): boolean {
    return this.socket.connected;
  }

  on<K extends keyof ConnectionEvents>(event: K, listener: ConnectionEvents[K]): () => void {
    return this.events.on(event, listener);
  }

  /** Listens to a server event on the socket (for as long as the connection lives). */
  onServer<K extends keyof ServerToClientEvents>(
    event: K,
    listener: ServerToClientEvents[K],
  ): void {
    (this.socket as unknown as { on(e: string, l: unknown): void }).on(event, listener);
  }

  /** One command with its ack and the command timeout (no guards: see `Commands`). */
  request<C extends CommandName>(name: C, payload: CommandInput<C>): Promise<CommandResults[C]> {
    return emitCommand(
      this.socket as unknown as TimedEmitter,
      name,
      payload,
      this.commandTimeoutMs,
    );
  }

  /** Connects again after `signedOut`, or right now (skipping the backoff) when not online. */
  reconnect(): void {
    if (this.isClosed) return;
    this.authFailures = 0;
    this.failures = 0;
    if (this.socket.connected) return;
    this.transition(
      "connecting",
      ConnectionCode.RECONNECT_REQUESTED,
      "Reconnecting (reconnect() was called)",
    );
    void this.connectNow();
  }

  setNetworkAvailable(available: boolean): void {
    if (this.isClosed || available === this.networkUp) return;
    this.networkUp = available;
    if (!available) {
      this.stopAttempts();
      if (!this.signedOut) {
        this.transition("offline", ConnectionCode.NETWORK_UNAVAILABLE, "The device has no network");
      }
      // Cut the connection now: an idle WebSocket can take a minute to notice on its own.
      this.socket.disconnect();
    } else if (!this.signedOut && !this.socket.connected) {
      this.failures = 0;
      void this.connectNow();
    }
  }

  close(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.stopAttempts();
    this.clearRefresh();
    this.timers.clear();
    this.detachNetwork?.();
    this.socket.disconnect();
    this.socket.off();
    this.transition("offline", ConnectionCode.CLOSED, "The client was closed");
    this.events.clear();
  }

  // -------------------------------------------------------------------------------------------
  // The state machine

  private transition(state: ConnectionState, code: string, message: string): void {
    const previous = this.status.getSnapshot();
    if (previous.state === state && previous.code === code && previous.message === message) return;
    const next: ConnectionStatus = Object.freeze({ state, code, message });
    this.status.set(next);
    this.state.set(state);
    this.events.emit("status", next, previous);
  }

  private signOut(code: string, message: string): void {
    if (this.signedOut || this.isClosed) return;
    this.clearRefresh();
    this.stopAttempts();
    this.transition("signedOut", code, message);
    this.socket.disconnect();
    this.events.emit("error", new ChatClientError(ClientErrorCode.SIGNED_OUT, message), "auth");
  }

  // -------------------------------------------------------------------------------------------
  // The reconnect loop (the only one: socket.io-client's reconnection is off)

  /** One attempt: a fresh token, then the handshake (dropping whatever an earlier one left). */
  private async connectNow(): Promise<void> {
    this.cancelRetry();
    if (this.isClosed || this.socket.connected || this.signedOut) return;
    const attempt = ++this.attempt;
    let token: string | null;
    try {
      token = await this.fetchToken();
    } catch (err) {
      if (attempt !== this.attempt || this.isClosed) return;
      this.events.emit("error", err, "getToken");
      const reason = err instanceof Error ? err.message : String(err);
      this.transition("offline", ConnectionCode.TOKEN_UNAVAILABLE, `getToken() failed: ${reason}`);
      this.retry(backoff(this.failures++, REFUSED_BASE_MS, REFUSED_MAX_MS));
      return;
    }
    if (attempt !== this.attempt || this.isClosed) return;
    if (token === null) {
      this.signOut(ConnectionCode.NO_TOKEN, "getToken() returned null");
      return;
    }
    this.token = token;
    this.socket.auth = { token };
    this.socket.disconnect();
    this.socket.connect();
  }

  /** Schedules the next attempt (replacing any scheduled one: one loop, one timer). */
  private retry(ms: number): void {
    this.cancelRetry();
    this.retryTimer = this.timers.later(ms, () => {
      this.retryTimer = undefined;
      if (!this.networkUp) return; // the `online` hint starts the next attempt
      void this.connectNow();
    });
  }

  /** Cancels the scheduled attempt and drops the one in progress (its token, if it arrives). */
  private stopAttempts(): void {
    this.attempt++;
    this.cancelRetry();
  }

  private cancelRetry(): void {
    this.timers.cancel(this.retryTimer);
    this.retryTimer = undefined;
  }

  private transportBackoff(): number {
    return backoff(this.failures++, this.retryBaseMs, this.retryMaxMs);
  }

  private onConnect(): void {
    if (this.isClosed) return;
    this.authFailures = 0;
    this.connectedAt = Date.now();
    this.transition("online", ConnectionCode.CONNECTED, "Connected");
    this.scheduleRefresh();
    this.events.emit("connected");
  }

  private onConnectError(err: Error): void {
    if (this.isClosed || this.signedOut) return;
    const data = (err as Error & { data?: { code?: unknown; retryAfterMs?: unknown } }).data;
    const code = data?.code;
    if (typeof code !== "string") {
      this.transition(
        "offline",
        ConnectionCode.TRANSPORT_ERROR,
        err.message || "The connection failed",
      );
      this.retry(this.transportBackoff());
      return;
    }
    switch (code) {
      case ConnectErrorCode.TOKEN_EXPIRED:
      case ConnectErrorCode.TOKEN_INVALID: {
        // A cached token may be stale: fetch a fresh one (a few times for an expired one).
        this.authFailures++;
        if (this.authFailures > (code === ConnectErrorCode.TOKEN_EXPIRED ? 3 : 1)) {
          this.signOut(code, `The server refused the token (${code})`);
          return;
        }
        this.transition(
          "reauthenticating",
          code,
          err.message || `The server refused the token (${code})`,
        );
        this.retry(backoff(this.authFailures - 1, 300, 3000));
        return;
      }
      case ConnectErrorCode.TOKEN_MISSING:
      case ConnectErrorCode.TOKEN_WRONG_PARTY:
        this.signOut(code, `The server refused the token (${code})`);
        return;
      case ConnectErrorCode.ORIGIN_NOT_ALLOWED:
        // The page's origin is not allowed: a configuration error no retry can fix.
        this.signOut(code, `The server refused this page's origin (${code})`);
        return;
      default: {
        this.transition(
          "offline",
          code,
          err.message || `The server refused the connection (${code})`,
        );
        // RATE_LIMITED says when a new attempt may succeed; earlier ones would only count.
        const hint = data?.retryAfterMs;
        const wait = backoff(this.failures++, REFUSED_BASE_MS, REFUSED_MAX_MS);
        this.retry(typeof hint === "number" ? Math.max(wait, hint) : wait);
      }
    }
  }

  private onDisconnect(reason: Socket.DisconnectReason): void {
    this.clearRefresh();
    // The backoff starts over only after a connection that lasted: a server that drops every
    // new connection is not hammered.
    if (Date.now() - this.connectedAt > STABLE_CONNECTION_MS) this.failures = 0;
    const closing = this.closing;
    this.closing = null;
    if (this.isClosed || this.signedOut) return;
    // Our own disconnects (offline, sign-out, close, a new attempt) set the state themselves.
    if (reason === "io client disconnect") return;
    if (reason === "io server disconnect") {
      if (closing && !closing.reconnect) {
        this.signOut(closing.reason, closing.message);
        return;
      }
      const expired = closing?.reason === DisconnectReason.TOKEN_EXPIRED;
      this.transition(
        expired ? "reauthenticating" : "offline",
        closing?.reason ?? ConnectionCode.TRANSPORT_ERROR,
        closing?.message ?? "The server closed the connection",
      );
      this.retry(
        closing?.reason === DisconnectReason.SERVER_SHUTDOWN
          ? 250 + Math.random() * 1000
          : backoff(this.failures++, 200, 5000),
      );
      return;
    }
    this.transition(
      "offline",
      ConnectionCode.TRANSPORT_ERROR,
      `The connection dropped (${reason})`,
    );
    this.retry(this.transportBackoff());
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
  // Tokens: a fresh one for every attempt; in-band `auth:refresh` before expiry

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

  private scheduleRefresh(): void {
    this.clearRefresh();
    if (!this.token) return;
    const times = tokenTimes(this.token);
    const delay = times ? refreshDelay(times, Date.now(), REFRESH_AT) : BLIND_REFRESH_MS;
    this.refreshTimer = this.timers.later(delay, () => {
      this.refreshTimer = undefined;
      void this.refreshToken();
    });
  }

  private clearRefresh(): void {
    this.timers.cancel(this.refreshTimer);
    this.refreshTimer = undefined;
  }

  /** Sends a fresh token over the open socket; true when the server took it. */
  refreshToken(): Promise<boolean> {
    this.refreshing ??= this.doRefresh().finally(() => {
      this.refreshing = null;
    });
    return this.refreshing;
  }

  private async doRefresh(): Promise<boolean> {
    let refused = 0;
    for (let attempt = 0; ; attempt++) {
      if (this.isClosed || !this.socket.connected || this.signedOut) {
        return false;
      }
      try {
        const token = await this.fetchToken();
        if (token === null) {
          this.signOut(ConnectionCode.NO_TOKEN, "getToken() returned null");
          return false;
        }
        if (!this.socket.connected) return false;
        const data = await this.request("auth:refresh", { token });
        this.token = token;
        this.scheduleRefresh();
        this.events.emit("auth:refreshed", data);
        return true;
      } catch (e) {
        const err = toChatClientError(e, "auth:refresh");
        if (
          err.code === ErrorCode.FORBIDDEN ||
          (err.code === ErrorCode.UNAUTHORIZED && ++refused > 1)
        ) {
          this.signOut(err.code, err.message);
          return false;
        }
        if (err.code === ClientErrorCode.DISCONNECTED) return false;
        this.events.emit("error", err, "auth:refresh");
        await this.timers.sleep(backoff(attempt, 500, 5000));
      }
    }
  }
}

/**
 * Runtime constants of the wire protocol. No dependencies, so the client SDK can import them
 * without pulling in the server's validation library. docs/protocol.md describes each one.
 */

/** Version of the wire protocol described in docs/protocol.md. */
export const PROTOCOL_VERSION = 2;

/**
 * The closed set of error codes an ack (or an HTTP error body) may carry. A new code must be
 * added here, to `retryableErrorCodes` if it is retryable, and to docs/protocol.md.
 */
export const ErrorCode = {
  /** No valid credentials: missing, malformed or badly signed token. Get a new token. */
  UNAUTHORIZED: "UNAUTHORIZED",
  /** The token expired. Refresh it (`auth:refresh`) or reconnect with a new one. */
  TOKEN_EXPIRED: "TOKEN_EXPIRED",
  /** Authenticated, but not allowed (e.g. refreshing with another user's token). */
  FORBIDDEN: "FORBIDDEN",
  /** The chat does not exist or is not yours (the two are not distinguished). */
  NOT_FOUND: "NOT_FOUND",
  /** The payload failed validation; `details` lists the problems. Do not retry unchanged. */
  INVALID_PAYLOAD: "INVALID_PAYLOAD",
  /** The event name is not a known command. */
  UNKNOWN_COMMAND: "UNKNOWN_COMMAND",
  /** Too many requests; retry after `retryAfterMs`. */
  RATE_LIMITED: "RATE_LIMITED",
  /** The request conflicts with the current state (e.g. a client id reused for other content). */
  CONFLICT: "CONFLICT",
  /** A dependency (the database) is unavailable or slow. Nothing was stored; retry with backoff. */
  UNAVAILABLE: "UNAVAILABLE",
  /** An unexpected server error. Logged on the server; retry with backoff. */
  INTERNAL: "INTERNAL",
  /**
   * The streamed reply was stopped by the user (`message:stop`): stop generating it. Answered
   * to the app's backend for chunks and finish after a stop. Do not retry.
   */
  STREAM_STOPPED: "STREAM_STOPPED",
} as const;

export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** Codes after which the same request may be sent again (with the same client id). */
export const retryableErrorCodes: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  ErrorCode.RATE_LIMITED,
  ErrorCode.UNAVAILABLE,
  ErrorCode.INTERNAL,
]);

/**
 * `data.code` of a `connect_error` when the handshake is refused. `connect_error.message`
 * carries a human-readable text.
 */
export const ConnectErrorCode = {
  /** No token in `auth.token` nor in an `Authorization: Bearer` header. */
  TOKEN_MISSING: "TOKEN_MISSING",
  /** The token's `exp` has passed. Get a fresh token and reconnect. */
  TOKEN_EXPIRED: "TOKEN_EXPIRED",
  /** Malformed token, bad signature, wrong algorithm, not yet valid, or no `sub`. */
  TOKEN_INVALID: "TOKEN_INVALID",
  /** The token's `azp` is not one of the server's authorized parties. */
  TOKEN_WRONG_PARTY: "TOKEN_WRONG_PARTY",
  /**
   * The handshake's `Origin` is not allowed: a browser page of another site. Configuration or
   * an attack: do not retry. (Non-browser clients send no Origin or the server's own.)
   */
  ORIGIN_NOT_ALLOWED: "ORIGIN_NOT_ALLOWED",
  /** Too many connections for this user or address. Retry later. */
  RATE_LIMITED: "RATE_LIMITED",
  /** The server could not complete the handshake (e.g. database unavailable). Retry later. */
  UNAVAILABLE: "UNAVAILABLE",
} as const;

export type ConnectErrorCode = (typeof ConnectErrorCode)[keyof typeof ConnectErrorCode];

/**
 * Reason carried by `connection:closing`, sent just before the server disconnects a socket.
 * `reconnect` in the event says whether reconnecting (with a fresh token) makes sense.
 */
export const DisconnectReason = {
  /** The token expired and was not refreshed within the grace period. Reconnect with a new token. */
  TOKEN_EXPIRED: "TOKEN_EXPIRED",
  /** The Clerk session was revoked or ended. Do not reconnect until the user signs in again. */
  SESSION_REVOKED: "SESSION_REVOKED",
  /** The user was deleted. Do not reconnect. */
  USER_DELETED: "USER_DELETED",
  /** This node is shutting down. Reconnect (the load balancer picks another node). */
  SERVER_SHUTDOWN: "SERVER_SHUTDOWN",
  /**
   * The socket went on sending commands far past its rate limit after being answered
   * RATE_LIMITED (a whole burst more). Reconnect with backoff, and honour `retryAfterMs`.
   */
  COMMAND_FLOOD: "COMMAND_FLOOD",
  /**
   * The client did not read what the server sent: more than the per-connection limit
   * (`SOCKET_MAX_BUFFERED_BYTES`, default 8 MiB) waited to be written to it. Its commands in
   * progress were dropped. Reconnect and catch up (`message:sync`); read what arrives.
   */
  SLOW_CONSUMER: "SLOW_CONSUMER",
} as const;

export type DisconnectReason = (typeof DisconnectReason)[keyof typeof DisconnectReason];

/**
 * Why the server sent `connection:resync`: this socket may have missed events (sent by other
 * nodes, or not sent at all), although it stayed connected. Whatever the reason, the client does
 * the same: re-list the sidebar and catch up every open chat, without reconnecting.
 */
export const ResyncReason = {
  /**
   * This node's link to the other nodes (Redis) was down or stalled and works again: events
   * published meanwhile did not reach it.
   */
  CLUSTER_RECONNECTED: "CLUSTER_RECONNECTED",
  /** Another node could not publish some events, or some of its events did not arrive here. */
  PEER_EVENTS_LOST: "PEER_EVENTS_LOST",
  /** Another node went silent (crashed or cut off): events it had not published are lost. */
  PEER_LOST: "PEER_LOST",
  /**
   * This node could not build an event it owed the user's devices (a database error after a
   * commit), or cannot tell whether a send committed (its connection broke with the answer).
   */
  EVENTS_DROPPED: "EVENTS_DROPPED",
} as const;

export type ResyncReason = (typeof ResyncReason)[keyof typeof ResyncReason];

/**
 * Why a streamed reply ended without being stored, carried by `message:failed`. The partial
 * text the devices showed should be dropped (or marked failed); nothing was stored.
 */
export const StreamFailureReason = {
  /** The app's backend reported that producing the reply failed. */
  FAILED: "FAILED",
  /** No chunk, finish or fail arrived within the stream timeout (the backend went away). */
  ABANDONED: "ABANDONED",
} as const;

export type StreamFailureReason = (typeof StreamFailureReason)[keyof typeof StreamFailureReason];

/** Limits enforced by the server (and checked early by the SDK). */
export const Limits = {
  /** Characters in one message's content. */
  MAX_MESSAGE_CHARS: 64_000,
  /** Characters in a chat title. */
  MAX_TITLE_CHARS: 200,
  /** Characters in a client-generated id. */
  MAX_CLIENT_ID_CHARS: 128,
  /** Items in one page (sidebar, history, sync). */
  MAX_PAGE_SIZE: 200,
  /** Default items in a page when `limit` is omitted. */
  DEFAULT_PAGE_SIZE: 50,
  /** Largest frame the server accepts, in bytes (Socket.IO `maxHttpBufferSize`). */
  MAX_FRAME_BYTES: 512 * 1024,
  /**
   * Bytes of JSON the items of one page may take (messages of `chat:open`, `message:history`
   * and `message:sync`; chats of `chat:list`), as the server estimates them. A page that
   * reaches it stops early and says so (`hasMore`, `nextCursor`); it always holds at least one
   * item, so paging moves on whatever the sizes.
   */
  MAX_PAGE_BYTES: 1024 * 1024,
  /**
   * Page commands (`chat:list`, `chat:open`, `message:history`, `message:sync`) the server runs
   * at once for one socket. Up to four times as many more wait their turn; beyond that one is
   * answered RATE_LIMITED with `retryAfterMs`.
   */
  MAX_PAGES_IN_FLIGHT: 8,
  /**
   * Page commands the server runs at once for one user, all of the user's sockets on a node
   * together (each still within its socket's MAX_PAGES_IN_FLIGHT). Up to four times as many
   * more wait their turn; beyond that one is answered RATE_LIMITED with `retryAfterMs`.
   */
  MAX_PAGES_IN_FLIGHT_PER_USER: 8,
} as const;

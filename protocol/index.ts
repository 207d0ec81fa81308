/**
 * The wire protocol: every client command with its zod schema, every server event, the ack
 * shape and the error codes. The server validates with these schemas; the client SDK imports
 * the types (and `./constants.js` at run time), so a changed payload breaks the build.
 * docs/protocol.md is the same contract written for people.
 */
import { z } from "zod";
import {
  type DisconnectReason,
  type ErrorCode,
  Limits,
  type ResyncReason,
  type StreamFailureReason,
} from "./constants.js";

export * from "./constants.js";

// ---------------------------------------------------------------------------------------------
// Building blocks

/** False for text Postgres cannot store (NUL) and broken UTF-16 (lone surrogates). */
export function isStorableText(s: string): boolean {
  return !s.includes("\u0000") && s.isWellFormed();
}

/** A string of at most `max` characters that Postgres can store (see isStorableText). */
export const storableText = (max: number) =>
  z
    .string()
    .max(max)
    .refine((s) => !s.includes("\u0000"), "must not contain NUL characters")
    .refine((s) => s.isWellFormed(), "must be well-formed Unicode");

/**
 * A chat id: a UUID in any letter case, normalised to lower case, the form Postgres returns and
 * the one room names are built from. Without it, a device that opened a chat by its upper-case
 * id would sit in another room and miss the chat's broadcasts.
 */
export const chatIdSchema = z.uuid({ message: "must be a UUID" }).transform((s) => s.toLowerCase());
const chatId = chatIdSchema;
const title = storableText(Limits.MAX_TITLE_CHARS)
  .transform((s) => s.trim())
  .pipe(z.string().min(1, "must not be blank"));
const limit = z.number().int().min(1).max(Limits.MAX_PAGE_SIZE).optional();
const seq = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);

/** A client-generated id: UUIDs, ULIDs and similar. */
export const clientIdSchema = z
  .string()
  .min(1)
  .max(Limits.MAX_CLIENT_ID_CHARS)
  .regex(/^[A-Za-z0-9._:-]+$/, "may contain only letters, digits and . _ : -");

/** Content of a message. */
export const contentSchema = storableText(Limits.MAX_MESSAGE_CHARS).refine(
  (s) => s.trim().length > 0,
  "must not be blank",
);

// ---------------------------------------------------------------------------------------------
// Client commands: each is emitted as (payload, ack).

export const commandSchemas = {
  /** Re-authenticate the open socket with a fresh token for the same user. */
  "auth:refresh": z.strictObject({ token: z.string().min(1).max(16_384) }),
  /** A page of the sidebar: the user's chats, latest activity first. */
  "chat:list": z.strictObject({ limit, cursor: z.string().max(200).optional() }),
  /** Create a chat. A client-generated `id` makes the create idempotent when retried. */
  "chat:create": z.strictObject({ id: chatId.optional(), title: title.optional() }),
  "chat:rename": z.strictObject({ chatId, title }),
  /** Delete a chat and its messages. The user's lifetime counters do not go down. */
  "chat:delete": z.strictObject({ chatId }),
  /** Open a chat: join its live stream and get its latest messages. */
  "chat:open": z.strictObject({ chatId, limit }),
  /** Leave a chat's live stream. */
  "chat:close": z.strictObject({ chatId }),
  /** Send a user message. Retrying with the same `clientId` stores it once. */
  "message:send": z.strictObject({ chatId, clientId: clientIdSchema, content: contentSchema }),
  /** A page of history: before a sequence (older) or after one (newer). */
  "message:history": z
    .strictObject({ chatId, before: seq.optional(), after: seq.optional(), limit })
    .refine((p) => p.before === undefined || p.after === undefined, {
      message: "give either before or after, not both",
    }),
  /** Everything after the last sequence this device saw, oldest first. */
  "message:sync": z.strictObject({ chatId, afterSeq: seq, limit }),
  /** The user's lifetime counters and plan (`get_user_stats`). */
  "user:stats": z.strictObject({}),
  /**
   * Stop a streamed reply in progress in one of the user's chats. The text streamed so far is
   * stored once as the final message, marked `stopped`; the app's backend is told.
   */
  "message:stop": z.strictObject({ chatId, streamId: clientIdSchema }),
} as const;

export type CommandName = keyof typeof commandSchemas;
/** The payload of a command as the client sends it. */
export type CommandInput<C extends CommandName> = z.input<(typeof commandSchemas)[C]>;
/** The payload of a command after validation (what the server's handlers get). */
export type CommandPayload<C extends CommandName> = z.output<(typeof commandSchemas)[C]>;

// ---------------------------------------------------------------------------------------------
// Data on the wire

/** The JSON stored in a message: who said it and what. */
export interface MessageBody {
  role: "user" | "assistant" | "system";
  content: string;
}

/** A stored message. `seq` is its position in the chat: 1, 2, 3, … with no gaps. */
export interface ChatMessage {
  id: string;
  chatId: string;
  seq: number;
  clientId: string;
  role: MessageBody["role"];
  content: string;
  /** ISO 8601. */
  createdAt: string;
  /** Present (true) only on a streamed reply that was stopped before it finished (`message:stop`). */
  stopped?: true;
}

/** A reply being generated in a chat: which stream, and since when. */
export interface GeneratingState {
  streamId: string;
  /** ISO 8601. */
  startedAt: string;
}

/** A sidebar entry. Sort by `updatedAt` descending, then `id` descending. */
export interface ChatSummary {
  id: string;
  title: string;
  /** The latest message's body, or null for an empty chat. */
  lastMessage: MessageBody | null;
  /** The latest message's `seq` (0 for an empty chat). */
  lastSeq: number;
  /**
   * Raised by every change to the chat (a rename, each stored message). Of two entries for one
   * chat, the one with the higher version is newer: keep it, ignore the older (events from
   * several server nodes may arrive in any order).
   */
  version: number;
  createdAt: string;
  /**
   * Latest activity, ISO 8601 with microseconds (`2026-11-25T05:03:10.123456Z`): the exact
   * value the server orders by. Compare as strings.
   */
  updatedAt: string;
  /**
   * The reply being generated in this chat (the latest active stream), or null. Always present
   * in `chat:list`, `chat:open`, `chat:create` and `chat:created`; `chat:updated` MAY omit it
   * (absent means unchanged). Live changes arrive as `chat:generating`.
   */
  generating?: GeneratingState | null;
}

/**
 * A streamed reply in progress, as `chat:open` returns it: everything streamed so far, so that a
 * device that opens the chat mid-reply (or after a reload or reconnect) shows it whole, then
 * applies the live `message:delta`s from `offset === content.length` on.
 */
export interface StreamSnapshot {
  streamId: string;
  chatId: string;
  role: "assistant" | "system";
  /** ISO 8601. */
  startedAt: string;
  /** The reply's text so far. */
  content: string;
  /** The index the next chunk from the app's backend will have. */
  nextIndex: number;
}

/** The user's counters (`get_user_stats`). Counters are lifetime: deleting chats does not lower them. */
export interface UserStats {
  totalConversations: number;
  totalSearches: number;
  messageCount: number;
  tokenUsage: number;
  subscriptionTier: string | null;
  subscriptionStatus: string | null;
}

export interface MessagePage {
  messages: ChatMessage[];
  /** True when more messages exist beyond this page in the direction asked. */
  hasMore: boolean;
}

/** What each command's ack carries on success. */
export interface CommandResults {
  "auth:refresh": { userId: string; expiresAt: string };
  "chat:list": { chats: ChatSummary[]; nextCursor: string | null };
  "chat:create": { chat: ChatSummary };
  "chat:rename": { chat: ChatSummary };
  "chat:delete": { chatId: string };
  "chat:open": { chat: ChatSummary } & MessagePage & {
      /** Replies streaming in this chat right now, oldest first (usually none or one). */
      streams: StreamSnapshot[];
    };
  "chat:close": { chatId: string };
  "message:send": { message: ChatMessage; duplicate: boolean };
  "message:history": MessagePage;
  "message:sync": MessagePage & { lastSeq: number };
  "user:stats": { stats: UserStats };
  "message:stop": {
    streamId: string;
    /**
     * What became of the stream: `stopped` by this command; `finished` (it was stored a moment
     * earlier: `message` is the stored reply); `failed` (it failed or was abandoned earlier).
     */
    status: "stopped" | "finished" | "failed";
    /** The stored reply (with `stopped: true` when stopped), or null when nothing was stored. */
    message: ChatMessage | null;
  };
}

/** An error as carried by an ack. */
export interface ProtocolError {
  code: ErrorCode;
  message: string;
  /** For INVALID_PAYLOAD: the problems, by path. */
  details?: { path: string; message: string }[];
  /** For RATE_LIMITED: milliseconds until a retry may succeed. */
  retryAfterMs?: number;
}

/** Every ack is one of these two shapes. */
export type Ack<T> = { ok: true; data: T } | { ok: false; error: ProtocolError };

// ---------------------------------------------------------------------------------------------
// Event maps (Socket.IO's typed events). The client uses them reversed.

/** Events a client emits. Every command takes (payload, ack). */
export type ClientToServerEvents = {
  [C in CommandName]: (
    payload: CommandInput<C>,
    ack: (result: Ack<CommandResults[C]>) => void,
  ) => void;
};

/** Sent to a socket just before the server disconnects it. */
export interface ConnectionClosing {
  reason: DisconnectReason;
  message: string;
  /** Whether reconnecting (with a fresh token) makes sense. */
  reconnect: boolean;
}

/**
 * Sent to a socket that stayed connected but may have missed events (see ResyncReason): the
 * client MUST re-list its sidebar (`chat:list`) and catch up every chat it has open (`chat:open`,
 * then `message:sync`), as after a reconnect, without disconnecting. It SHOULD start at a random
 * moment within `spreadMs`, so that a node's sockets do not all query at once.
 */
export interface ConnectionResync {
  reason: ResyncReason;
  /** Milliseconds over which the node's sockets should spread their catch-up (0: at once). */
  spreadMs: number;
}

/**
 * A streamed reply (from the app's backend, through the service API) began in a chat this
 * socket has open. Deltas follow; it ends with `message:created` (whose `message.clientId`
 * equals `streamId`), `message:stopped` (then `message:created` of the partial reply, if any) or
 * `message:failed`.
 */
export interface MessageStreaming {
  streamId: string;
  chatId: string;
  role: "assistant" | "system";
  /** ISO 8601. */
  startedAt: string;
}

/**
 * A piece of a streamed reply. The server coalesces the backend's chunks, so one delta may carry
 * several of them. Place the text by `offset`: append the part of `delta` beyond the text you
 * already have; drop a delta that ends at or before it (a duplicate, or one already contained in
 * a `StreamSnapshot`). A delta whose `offset` is beyond your text means text was missed: get a
 * fresh snapshot (`chat:open`).
 */
export interface MessageDelta {
  streamId: string;
  chatId: string;
  /** Index of the first backend chunk in this delta (0, 1, 2, … per stream). */
  index: number;
  /** Characters (UTF-16 code units) of the reply before this delta. */
  offset: number;
  delta: string;
}

/**
 * A streamed reply was stopped (`message:stop`, from any device). Show it as stopped at once; the
 * stored reply (with `stopped: true`) follows as `message:created` when there was any text.
 */
export interface MessageStopped {
  streamId: string;
  chatId: string;
  /** ISO 8601. */
  stoppedAt: string;
}

/**
 * Whether a reply is being generated in a chat, to every device of the user (the sidebar's
 * spinner). `active: true` when a stream starts, `active: false` when it ends (stored, stopped,
 * failed or abandoned). Apply by `streamId`: an end clears the chat's state only if it names the
 * stream shown; a start for a stream already seen ending is stale and ignored.
 */
export interface ChatGenerating {
  chatId: string;
  streamId: string;
  active: boolean;
  /** ISO 8601: when the stream started. */
  startedAt: string;
}

/** A streamed reply ended without being stored: drop (or mark failed) what was shown. */
export interface MessageStreamFailed {
  streamId: string;
  chatId: string;
  reason: StreamFailureReason;
  message: string;
}

/** Events the server emits. */
export interface ServerToClientEvents {
  /** A message was stored in a chat this socket has open (the sender's socket included). */
  "message:created": (event: { message: ChatMessage }) => void;
  /** A chat of the user was created on some device. */
  "chat:created": (event: { chat: ChatSummary }) => void;
  /** A chat's sidebar entry changed: renamed, or a new message (preview and order). */
  "chat:updated": (event: { chat: ChatSummary }) => void;
  /** A chat of the user was deleted. */
  "chat:deleted": (event: { chatId: string }) => void;
  /** The user's counters changed. */
  "stats:updated": (event: { stats: UserStats }) => void;
  /** The server is about to disconnect this socket, and why. */
  "connection:closing": (event: ConnectionClosing) => void;
  /** Events may have been missed: re-list the sidebar and catch up open chats (no reconnect). */
  "connection:resync": (event: ConnectionResync) => void;
  /** A streamed reply began in a chat this socket has open. */
  "message:streaming": (event: MessageStreaming) => void;
  /** A piece of a streamed reply (coalesced); place it by `offset`, drop what you have. */
  "message:delta": (event: MessageDelta) => void;
  /** A streamed reply failed or was abandoned; nothing was stored. */
  "message:failed": (event: MessageStreamFailed) => void;
  /** A streamed reply was stopped; the stored partial reply follows as `message:created`. */
  "message:stopped": (event: MessageStopped) => void;
  /** A reply started or stopped being generated in one of the user's chats (every device). */
  "chat:generating": (event: ChatGenerating) => void;
}

/** Events between server nodes (none beyond the adapter's own). */
export type InterServerEvents = Record<string, never>;

/** What the server keeps on each authenticated socket. */
export interface SocketData {
  /** Clerk user id (`sub`). */
  userId: string;
  /** Primary key of the user's `users` row. */
  dbUserId: string;
  /** `users.subscription_tier` when the socket connected: picks the per-user write limits. */
  subscriptionTier: string | null;
  /** Clerk session id (`sid`), when the token has one. */
  sessionId: string | null;
  /** Expiry of the current token, epoch milliseconds. */
  tokenExpiresAt: number;
}

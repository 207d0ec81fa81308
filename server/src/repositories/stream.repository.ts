/**
 * Where the state of streamed assistant replies lives between the service API's calls (start,
 * chunks, finish, fail), which a load balancer may send to different nodes.
 *
 * - With Redis (REDIS_URL, i.e. more than one node): one hash per stream
 *   (`<prefix>:stream:<id>`, with a TTL), one sorted set of deadlines
 *   (`<prefix>:streams:deadlines`) and, per chat, a sorted set of its open streams by start time
 *   (`<prefix>:chat-streams:<chatId>`, for `chat:open`'s snapshots and the sidebar's generating
 *   state).
 * - On a Redis Cluster the same keys are split into STREAM_SHARDS groups by a hash of the
 *   stream id, each group one hash slot (`<prefix>:{streams:<n>}:stream:<id>`,
 *   `…:{streams:<n>}:streams:deadlines`, `…:{streams:<n>}:chat-streams:<chatId>`): every script
 *   touches one group only, and the deadlines (written on every chunk) are STREAM_SHARDS sets
 *   spread over the masters instead of one hot key. A chat's open streams are then read from
 *   every group (one small script call each, in parallel). Every change is one Lua script that keeps all three in step, so it is atomic across
 *   nodes: two nodes appending the same chunk apply it once, a stop and a finish racing end in
 *   one of them, and of several nodes sweeping for abandoned streams exactly one marks each one
 *   failed (and broadcasts that).
 * - Without Redis (one node): the same rules in this process's memory.
 *
 * One implementation per file: MemoryStreamStore (stream.memory.ts), RedisStreamStore
 * (stream.redis.ts, one Redis or a Redis Cluster).
 *
 * Postgres is not used: the state is short-lived and written on every chunk, and only the
 * finished reply is durable (stored once through MessageService.post).
 */

/**
 * `active` → `finishing` → `finished` (stored), `active` → `failed` (by the backend or
 * abandoned), `active` → `stopping` → `stopped` (a user's `message:stop`: the text so far is
 * being stored). `finishing` and `stopping` hold a lease (`deadline`): a node that dies inside
 * one leaves it to the sweeper, which finishes storing the reply (a `finishing` stream's
 * `finishContent`, or else its chunks; a `stopping` one's text so far).
 */
export type StreamStatus = "active" | "finishing" | "finished" | "failed" | "stopping" | "stopped";

/** Statuses in which a reply is still being generated (shown as in progress). */
export const OPEN_STATUSES: ReadonlySet<StreamStatus> = new Set(["active", "finishing"]);

export interface StreamRecord {
  streamId: string;
  /** Clerk user id. */
  userId: string;
  /** Primary key of the user's `users` row. */
  dbUserId: string;
  chatId: string;
  role: "assistant" | "system";
  status: StreamStatus;
  /** The index the next chunk must have (0, 1, 2, …): the number of chunks applied. */
  nextIndex: number;
  /** Length of `content` in UTF-16 code units (what the message limit counts). */
  length: number;
  /** The chunks applied so far, concatenated; the stored content once finished. */
  content: string;
  /** Epoch milliseconds. */
  startedAt: number;
  /**
   * Epoch milliseconds: an active or finishing stream not touched by then is abandoned; a
   * stopping one is taken over by the sweeper.
   */
  deadline: number;
  failureReason: string | null;
  failureMessage: string | null;
  /**
   * The content a finish in progress (`finishing`) asked to store instead of the chunks, so
   * that the sweeper stores exactly that if the finishing node dies; null otherwise.
   */
  finishContent: string | null;
}

export type AppendOutcome =
  | { kind: "ok"; applied: number; nextIndex: number; chatId: string; length: number }
  | { kind: "missing" }
  | { kind: "status"; status: StreamStatus }
  | { kind: "gap"; nextIndex: number }
  | { kind: "too_long"; length: number };

export type TransitionOutcome =
  | { ok: true; record: StreamRecord }
  | { ok: false; status: StreamStatus | "missing" };

export interface TransitionOptions {
  /** Milliseconds the record is kept from now. */
  ttlMs: number;
  /** New deadline (for `active` and `finishing`); terminal states have none. */
  deadline?: number | undefined;
  /** Replaces the content (and its length). */
  content?: string | undefined;
  failure?: { reason: string; message: string } | undefined;
  /** Sets (a string) or clears (null) `finishContent`; undefined leaves it. */
  finishContent?: string | null | undefined;
}

export interface StreamStore {
  /** Stores a new stream, unless its id exists: then returns the stored one, `created: false`. */
  create(record: StreamRecord, ttlMs: number): Promise<{ created: boolean; record: StreamRecord }>;
  get(streamId: string): Promise<StreamRecord | undefined>;
  /**
   * Appends consecutive chunks starting at `firstIndex`. Chunks below `nextIndex` were applied
   * before (a retry) and are skipped; a `firstIndex` above it is a gap and changes nothing;
   * so does passing `maxLength`. Refreshes the deadline.
   */
  append(
    streamId: string,
    firstIndex: number,
    deltas: string[],
    options: { maxLength: number; deadline: number; ttlMs: number },
  ): Promise<AppendOutcome>;
  /** Moves the stream from `from` to `to` if it is in `from`; otherwise reports its status. */
  transition(
    streamId: string,
    from: StreamStatus,
    to: StreamStatus,
    options: TransitionOptions,
  ): Promise<TransitionOutcome>;
  /**
   * Takes up to `limit` streams whose deadline is at or before `now`: active ones are marked
   * failed (with `failure`, kept `ttlMs`); finishing and stopping ones (their stored reply is
   * not recorded yet: the node storing it died or could not) keep their status and get the new
   * deadline `leaseUntil`, for the caller to finish storing them. Returns them (status after the change). Each stream is returned by one
   * call only, whichever node makes it.
   */
  expire(
    now: number,
    limit: number,
    ttlMs: number,
    failure: { reason: string; message: string },
    leaseUntil: number,
  ): Promise<StreamRecord[]>;
  /** The chat's open (active or finishing) streams, oldest first. */
  openStreams(chatId: string): Promise<StreamRecord[]>;
  /**
   * For each chat, its latest open stream (id and start), if any: the sidebar's generating
   * state for a page of chats in one round trip.
   */
  generating(
    chatIds: readonly string[],
  ): Promise<Map<string, { streamId: string; startedAt: number }>>;
}

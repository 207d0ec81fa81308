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
 *   `…:{streams:<n>}:deadlines`, `…:{streams:<n>}:chat-streams:<chatId>`): every script
 *   touches one group only, and the deadlines (written on every chunk) are STREAM_SHARDS sets
 *   spread over the masters instead of one hot key. A chat's open streams are then read from
 *   every group (one small script call each, in parallel). Every change is one Lua script that keeps all three in step, so it is atomic across
 *   nodes: two nodes appending the same chunk apply it once, a stop and a finish racing end in
 *   one of them, and of several nodes sweeping for abandoned streams exactly one marks each one
 *   failed (and broadcasts that).
 * - Without Redis (one node): the same rules in this process's memory.
 *
 * Postgres is not used: the state is short-lived and written on every chunk, and only the
 * finished reply is durable (stored once through MessageService.post).
 */
import { isCluster, type RedisClient, slotTag } from "../redis/client.js";

/**
 * `active` → `finishing` → `finished` (stored), `active` → `failed` (by the backend or
 * abandoned), `active` → `stopping` → `stopped` (a user's `message:stop`: the text so far is
 * being stored). `finishing` and `stopping` hold a lease (`deadline`): a node that dies inside
 * one leaves it to the sweeper, which fails a `finishing` stream and finishes storing a
 * `stopping` one.
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
   * Takes up to `limit` streams whose deadline is at or before `now`: active or finishing ones
   * are marked failed (with `failure`, kept `ttlMs`); stopping ones (their stored reply is not
   * recorded yet) keep their status and get the new deadline `leaseUntil`, for the caller to
   * finish storing them. Returns them (status after the change). Each stream is returned by one
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

// ---------------------------------------------------------------------------------------------
// Memory (one node)

export class MemoryStreamStore implements StreamStore {
  private readonly streams = new Map<string, { record: StreamRecord; expiresAt: number }>();
  /** Per chat, the ids of its open streams (the Redis store's `chat-streams` set). */
  private readonly byChat = new Map<string, Set<string>>();

  private live(streamId: string): StreamRecord | undefined {
    const entry = this.streams.get(streamId);
    if (!entry) return undefined;
    if (entry.expiresAt <= Date.now()) {
      this.forget(streamId);
      return undefined;
    }
    return entry.record;
  }

  private forget(streamId: string): void {
    const entry = this.streams.get(streamId);
    this.streams.delete(streamId);
    if (entry) this.index(entry.record);
  }

  /** Keeps the per-chat index in step with the record's status. */
  private index(r: StreamRecord): void {
    const open = OPEN_STATUSES.has(r.status) && this.streams.get(r.streamId)?.record === r;
    const set = this.byChat.get(r.chatId);
    if (open) {
      if (set) set.add(r.streamId);
      else this.byChat.set(r.chatId, new Set([r.streamId]));
    } else if (set?.delete(r.streamId) && set.size === 0) {
      this.byChat.delete(r.chatId);
    }
  }

  private put(record: StreamRecord, ttlMs: number): void {
    this.streams.set(record.streamId, { record, expiresAt: Date.now() + ttlMs });
    this.index(record);
  }

  async create(record: StreamRecord, ttlMs: number) {
    const existing = this.live(record.streamId);
    if (existing) return { created: false, record: { ...existing } };
    this.put({ ...record }, ttlMs);
    return { created: true, record: { ...record } };
  }

  async get(streamId: string) {
    const r = this.live(streamId);
    return r ? { ...r } : undefined;
  }

  async append(
    streamId: string,
    firstIndex: number,
    deltas: string[],
    options: { maxLength: number; deadline: number; ttlMs: number },
  ): Promise<AppendOutcome> {
    const r = this.live(streamId);
    if (!r) return { kind: "missing" };
    if (r.status !== "active") return { kind: "status", status: r.status };
    if (firstIndex > r.nextIndex) return { kind: "gap", nextIndex: r.nextIndex };
    const fresh = deltas.slice(r.nextIndex - firstIndex);
    const added = fresh.reduce((n, d) => n + d.length, 0);
    if (r.length + added > options.maxLength) return { kind: "too_long", length: r.length };
    r.content += fresh.join("");
    r.length += added;
    r.nextIndex += fresh.length;
    r.deadline = options.deadline;
    this.put(r, options.ttlMs);
    return {
      kind: "ok",
      applied: fresh.length,
      nextIndex: r.nextIndex,
      chatId: r.chatId,
      length: r.length,
    };
  }

  async transition(
    streamId: string,
    from: StreamStatus,
    to: StreamStatus,
    options: TransitionOptions,
  ): Promise<TransitionOutcome> {
    const r = this.live(streamId);
    if (!r) return { ok: false, status: "missing" };
    if (r.status !== from) return { ok: false, status: r.status };
    applyTransition(r, to, options);
    this.put(r, options.ttlMs);
    return { ok: true, record: { ...r } };
  }

  async expire(
    now: number,
    limit: number,
    ttlMs: number,
    failure: { reason: string; message: string },
    leaseUntil: number,
  ): Promise<StreamRecord[]> {
    const out: StreamRecord[] = [];
    for (const [id, entry] of this.streams) {
      if (entry.expiresAt <= now) {
        this.forget(id);
        continue;
      }
      const r = entry.record;
      if (r.deadline > now) continue;
      if (OPEN_STATUSES.has(r.status)) {
        applyTransition(r, "failed", { ttlMs, failure });
        this.put(r, ttlMs);
      } else if (r.status === "stopping") {
        r.deadline = leaseUntil;
      } else {
        continue;
      }
      out.push({ ...r });
      if (out.length >= limit) break;
    }
    return out;
  }

  async openStreams(chatId: string): Promise<StreamRecord[]> {
    const out: StreamRecord[] = [];
    for (const id of this.byChat.get(chatId) ?? []) {
      const r = this.live(id);
      if (r && OPEN_STATUSES.has(r.status)) out.push({ ...r });
    }
    return out.sort((a, b) => a.startedAt - b.startedAt);
  }

  async generating(chatIds: readonly string[]) {
    const out = new Map<string, { streamId: string; startedAt: number }>();
    for (const chatId of chatIds) {
      const latest = (await this.openStreams(chatId)).at(-1);
      if (latest) out.set(chatId, { streamId: latest.streamId, startedAt: latest.startedAt });
    }
    return out;
  }
}

function applyTransition(r: StreamRecord, to: StreamStatus, options: TransitionOptions): void {
  r.status = to;
  if (options.deadline !== undefined) r.deadline = options.deadline;
  if (options.content !== undefined) {
    r.content = options.content;
    r.length = options.content.length;
  }
  if (options.failure) {
    r.failureReason = options.failure.reason;
    r.failureMessage = options.failure.message;
  }
}

// ---------------------------------------------------------------------------------------------
// Redis (several nodes)

// Extends a key's TTL to at least ARGV-given milliseconds (never shortens: the chat's set holds
// streams of different ages).
const KEEP = `
local function keep(key, ttl)
  if redis.call('PTTL', key) < tonumber(ttl) then redis.call('PEXPIRE', key, ttl) end
end
`;

// KEYS: stream, deadlines, chat's streams. ARGV: id, ttl, deadline, startedAt, field/value…
const CREATE = `${KEEP}
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, redis.call('HGETALL', KEYS[1])}
end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
keep(KEYS[3], ARGV[2])
return {1, redis.call('HGETALL', KEYS[1])}`;

// KEYS: stream, deadlines.
// ARGV: id, firstIndex, n, maxLength, deadline, ttl, chat-streams prefix,
//       length_1..length_n, delta_1..delta_n
const APPEND = `${KEEP}
local st = redis.call('HMGET', KEYS[1], 'status', 'nextIndex', 'length', 'chatId')
if not st[1] then return {'missing'} end
if st[1] ~= 'active' then return {'status', st[1]} end
local nextIndex = tonumber(st[2])
local length = tonumber(st[3])
local first = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
if first > nextIndex then return {'gap', nextIndex} end
local skip = nextIndex - first
local added = 0
local parts = {}
for i = skip + 1, n do
  added = added + tonumber(ARGV[7 + i])
  parts[#parts + 1] = ARGV[7 + n + i]
end
if length + added > tonumber(ARGV[4]) then return {'too_long', length} end
local applied = #parts
if applied > 0 then
  local content = redis.call('HGET', KEYS[1], 'content') .. table.concat(parts)
  redis.call('HSET', KEYS[1], 'content', content, 'nextIndex', nextIndex + applied,
    'length', length + added)
end
redis.call('HSET', KEYS[1], 'deadline', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
keep(ARGV[7] .. st[4], ARGV[6])
return {'ok', applied, nextIndex + applied, st[4], length + added}`;

// KEYS: stream, deadlines.
// ARGV: id, from, to, ttl, deadline|'', hasContent, content, contentLength, reason|'', message,
//       chat-streams prefix
const TRANSITION = `${KEEP}
local st = redis.call('HMGET', KEYS[1], 'status', 'chatId', 'startedAt')
if not st[1] then return {'missing'} end
if st[1] ~= ARGV[2] then return {'status', st[1]} end
redis.call('HSET', KEYS[1], 'status', ARGV[3])
if ARGV[6] == '1' then
  redis.call('HSET', KEYS[1], 'content', ARGV[7], 'length', ARGV[8])
end
if ARGV[9] ~= '' then
  redis.call('HSET', KEYS[1], 'failureReason', ARGV[9], 'failureMessage', ARGV[10])
end
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[1], 'deadline', ARGV[5])
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
else
  redis.call('ZREM', KEYS[2], ARGV[1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local chat = ARGV[11] .. st[2]
if ARGV[3] == 'active' or ARGV[3] == 'finishing' then
  redis.call('ZADD', chat, st[3], ARGV[1])
  keep(chat, ARGV[4])
else
  redis.call('ZREM', chat, ARGV[1])
end
return {'ok', redis.call('HGETALL', KEYS[1])}`;

// KEYS: deadlines.
// ARGV: now, limit, ttl, stream key prefix, reason, message, chat-streams prefix, leaseUntil
const EXPIRE = `
local now = tonumber(ARGV[1])
local lease = tonumber(ARGV[8])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  local key = ARGV[4] .. id
  local st = redis.call('HMGET', key, 'status', 'deadline', 'chatId')
  local open = st[1] == 'active' or st[1] == 'finishing'
  if (open or st[1] == 'stopping') and tonumber(st[2]) > now then
    redis.call('ZADD', KEYS[1], st[2], id)
  elseif open then
    redis.call('ZREM', KEYS[1], id)
    redis.call('HSET', key, 'status', 'failed', 'failureReason', ARGV[5],
      'failureMessage', ARGV[6])
    redis.call('PEXPIRE', key, ARGV[3])
    redis.call('ZREM', ARGV[7] .. st[3], id)
    out[#out + 1] = redis.call('HGETALL', key)
  elseif st[1] == 'stopping' then
    redis.call('HSET', key, 'deadline', lease)
    redis.call('ZADD', KEYS[1], lease, id)
    redis.call('PEXPIRE', key, lease - now + tonumber(ARGV[3]))
    out[#out + 1] = redis.call('HGETALL', key)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out`;

// KEYS: chat's streams. ARGV: stream key prefix. Drops members that are no longer open.
const OPEN = `
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local st = redis.call('HGET', ARGV[1] .. id, 'status')
  if st == 'active' or st == 'finishing' then
    out[#out + 1] = redis.call('HGETALL', ARGV[1] .. id)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out`;

// KEYS: chats' streams. ARGV: stream key prefix. Per chat {streamId, startedAt} of its latest
// open stream, or {}.
const GENERATING = `
local out = {}
for i, chat in ipairs(KEYS) do
  out[i] = {}
  local members = redis.call('ZREVRANGE', chat, 0, -1, 'WITHSCORES')
  for j = 1, #members, 2 do
    local st = redis.call('HGET', ARGV[1] .. members[j], 'status')
    if st == 'active' or st == 'finishing' then
      out[i] = {members[j], members[j + 1]}
      break
    end
  end
end
return out`;

type Reply = (string | number | Reply)[];

type ScriptClient = RedisClient & {
  chatStreamCreate(...args: (string | number)[]): Promise<Reply>;
  chatStreamAppend(...args: (string | number)[]): Promise<Reply>;
  chatStreamTransition(...args: (string | number)[]): Promise<Reply>;
  chatStreamExpire(...args: (string | number)[]): Promise<Reply>;
  chatStreamOpen(...args: (string | number)[]): Promise<Reply>;
  chatStreamGenerating(...args: (string | number)[]): Promise<Reply>;
};

/** Hash-slot groups of the stream keys on a Redis Cluster (see the top of this file). */
export const STREAM_SHARDS = 16;

/** The keys of one group: every key a script touches lies in one group. */
interface KeyGroup {
  deadlines: string;
  /** Prefix of the stream hashes (+ stream id). */
  streamPrefix: string;
  /** Prefix of the per-chat sets (+ chat id). */
  chatPrefix: string;
}

function group(base: string): KeyGroup {
  return {
    deadlines: `${base}:streams:deadlines`,
    streamPrefix: `${base}:stream:`,
    chatPrefix: `${base}:chat-streams:`,
  };
}

/** FNV-1a of the stream id: its group, the same on every node. */
function hashOf(id: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < id.length; i++) {
    h ^= id.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** How long a call waits for a Redis connection that is (re)connecting before failing. */
const READY_WAIT_MS = 2000;

export class RedisStreamStore implements StreamStore {
  private readonly redis: ScriptClient;
  private readonly groups: KeyGroup[];
  /** Where the next sweep starts, so one group's backlog does not hold up the others. */
  private sweepFrom = 0;
  private waiting: Promise<void> | undefined;

  /**
   * `shards`: 0 for one Redis (the keys above, unchanged), n > 0 for n hash-tagged groups;
   * default STREAM_SHARDS on a cluster, 0 otherwise.
   */
  constructor(redis: RedisClient, prefix: string, options: { shards?: number } = {}) {
    const shards = options.shards ?? (isCluster(redis) ? STREAM_SHARDS : 0);
    this.groups =
      shards === 0
        ? [group(prefix)]
        : Array.from({ length: shards }, (_, i) => group(`${prefix}:${slotTag(`streams:${i}`)}`));
    const scripts = [
      ["chatStreamCreate", CREATE, 3],
      ["chatStreamAppend", APPEND, 2],
      ["chatStreamTransition", TRANSITION, 2],
      ["chatStreamExpire", EXPIRE, 1],
      ["chatStreamOpen", OPEN, 1],
      // The number of keys varies (a page of chats): given as the first argument.
      ["chatStreamGenerating", GENERATING, undefined],
    ] as const;
    for (const [name, lua, numberOfKeys] of scripts) {
      // Idempotent: defining the same command again on a shared client is harmless.
      if (!(name in redis)) {
        redis.defineCommand(name, numberOfKeys === undefined ? { lua } : { lua, numberOfKeys });
      }
    }
    this.redis = redis as ScriptClient;
  }

  private groupOf(streamId: string): KeyGroup {
    return this.groups[
      this.groups.length === 1 ? 0 : hashOf(streamId) % this.groups.length
    ] as KeyGroup;
  }

  private key(streamId: string): string {
    return this.groupOf(streamId).streamPrefix + streamId;
  }

  /**
   * The shared client fails fast while disconnected (no offline queue); right after start it
   * may still be connecting, so wait for it briefly before giving up.
   */
  private ready(): Promise<void> {
    if (this.redis.status === "ready") return Promise.resolve();
    // One wait shared by every caller, so an outage does not pile up listeners.
    this.waiting ??= new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.redis.off("ready", onReady);
        reject(new Error("redis is not connected"));
      }, READY_WAIT_MS);
      const onReady = () => {
        clearTimeout(timer);
        resolve();
      };
      this.redis.once("ready", onReady);
    }).finally(() => {
      this.waiting = undefined;
    });
    return this.waiting;
  }

  async create(record: StreamRecord, ttlMs: number) {
    await this.ready();
    const fields = Object.entries(record).flatMap(([k, v]) => (v === null ? [] : [k, String(v)]));
    const g = this.groupOf(record.streamId);
    const [created, flat] = await this.redis.chatStreamCreate(
      this.key(record.streamId),
      g.deadlines,
      g.chatPrefix + record.chatId,
      record.streamId,
      ttlMs,
      record.deadline,
      record.startedAt,
      ...fields,
    );
    return { created: created === 1, record: fromFlat(flat as Reply) };
  }

  async get(streamId: string) {
    await this.ready();
    const hash = await this.redis.hgetall(this.key(streamId));
    if (!hash.status) return undefined;
    return fromHash(hash);
  }

  async append(
    streamId: string,
    firstIndex: number,
    deltas: string[],
    options: { maxLength: number; deadline: number; ttlMs: number },
  ): Promise<AppendOutcome> {
    await this.ready();
    const g = this.groupOf(streamId);
    const reply = await this.redis.chatStreamAppend(
      this.key(streamId),
      g.deadlines,
      streamId,
      firstIndex,
      deltas.length,
      options.maxLength,
      options.deadline,
      options.ttlMs,
      g.chatPrefix,
      ...deltas.map((d) => d.length),
      ...deltas,
    );
    switch (reply[0]) {
      case "ok":
        return {
          kind: "ok",
          applied: Number(reply[1]),
          nextIndex: Number(reply[2]),
          chatId: String(reply[3]),
          length: Number(reply[4]),
        };
      case "status":
        return { kind: "status", status: reply[1] as StreamStatus };
      case "gap":
        return { kind: "gap", nextIndex: Number(reply[1]) };
      case "too_long":
        return { kind: "too_long", length: Number(reply[1]) };
      default:
        return { kind: "missing" };
    }
  }

  async transition(
    streamId: string,
    from: StreamStatus,
    to: StreamStatus,
    options: TransitionOptions,
  ): Promise<TransitionOutcome> {
    await this.ready();
    const g = this.groupOf(streamId);
    const reply = await this.redis.chatStreamTransition(
      this.key(streamId),
      g.deadlines,
      streamId,
      from,
      to,
      options.ttlMs,
      options.deadline ?? "",
      options.content === undefined ? "0" : "1",
      options.content ?? "",
      options.content?.length ?? 0,
      options.failure?.reason ?? "",
      options.failure?.message ?? "",
      g.chatPrefix,
    );
    if (reply[0] === "ok") return { ok: true, record: fromFlat(reply[1] as Reply) };
    if (reply[0] === "status") return { ok: false, status: reply[1] as StreamStatus };
    return { ok: false, status: "missing" };
  }

  async expire(
    now: number,
    limit: number,
    ttlMs: number,
    failure: { reason: string; message: string },
    leaseUntil: number,
  ): Promise<StreamRecord[]> {
    await this.ready();
    const out: StreamRecord[] = [];
    const n = this.groups.length;
    const start = this.sweepFrom++ % n;
    for (let i = 0; i < n && out.length < limit; i++) {
      const g = this.groups[(start + i) % n] as KeyGroup;
      const reply = await this.redis.chatStreamExpire(
        g.deadlines,
        now,
        limit - out.length,
        ttlMs,
        g.streamPrefix,
        failure.reason,
        failure.message,
        g.chatPrefix,
        leaseUntil,
      );
      for (const flat of reply) out.push(fromFlat(flat as Reply));
    }
    return out;
  }

  async openStreams(chatId: string): Promise<StreamRecord[]> {
    await this.ready();
    const replies = await Promise.all(
      this.groups.map((g) => this.redis.chatStreamOpen(g.chatPrefix + chatId, g.streamPrefix)),
    );
    const out = replies.flat().map((flat) => fromFlat(flat as Reply));
    // Each group's are in start order; a chat's streams in several groups are merged.
    return this.groups.length === 1 ? out : out.sort((a, b) => a.startedAt - b.startedAt);
  }

  async generating(chatIds: readonly string[]) {
    const out = new Map<string, { streamId: string; startedAt: number }>();
    if (chatIds.length === 0) return out;
    await this.ready();
    const replies = await Promise.all(
      this.groups.map((g) =>
        this.redis.chatStreamGenerating(
          chatIds.length,
          ...chatIds.map((id) => g.chatPrefix + id),
          g.streamPrefix,
        ),
      ),
    );
    for (const reply of replies) {
      reply.forEach((entry, i) => {
        const chatId = chatIds[i];
        if (chatId !== undefined && Array.isArray(entry) && entry.length === 2) {
          const found = { streamId: String(entry[0]), startedAt: Number(entry[1]) };
          // The latest open stream of the chat across the groups.
          if ((out.get(chatId)?.startedAt ?? -1) < found.startedAt) out.set(chatId, found);
        }
      });
    }
    return out;
  }
}

function fromFlat(flat: Reply): StreamRecord {
  const hash: Record<string, string> = {};
  for (let i = 0; i + 1 < flat.length; i += 2) hash[String(flat[i])] = String(flat[i + 1]);
  return fromHash(hash);
}

function fromHash(h: Record<string, string>): StreamRecord {
  return {
    streamId: h.streamId ?? "",
    userId: h.userId ?? "",
    dbUserId: h.dbUserId ?? "",
    chatId: h.chatId ?? "",
    role: h.role === "system" ? "system" : "assistant",
    status: (h.status ?? "failed") as StreamStatus,
    nextIndex: Number(h.nextIndex ?? 0),
    length: Number(h.length ?? 0),
    content: h.content ?? "",
    startedAt: Number(h.startedAt ?? 0),
    deadline: Number(h.deadline ?? 0),
    failureReason: h.failureReason ?? null,
    failureMessage: h.failureMessage ?? null,
  };
}

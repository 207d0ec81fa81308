/**
 * Where the state of streamed assistant replies lives between the service API's calls (start,
 * chunks, finish, fail), which a load balancer may send to different nodes.
 *
 * - With Redis (REDIS_URL, i.e. more than one node): one hash per stream
 *   (`<prefix>:stream:<id>`, with a TTL) and one sorted set of deadlines
 *   (`<prefix>:streams:deadlines`). Every change is one Lua script, so it is atomic across
 *   nodes: two nodes appending the same chunk apply it once, and of several nodes sweeping for
 *   abandoned streams exactly one marks each one failed (and broadcasts that).
 * - Without Redis (one node): the same rules in this process's memory.
 *
 * Postgres is not used: the state is short-lived and written on every chunk, and only the
 * finished reply is durable (stored once through MessageService.post).
 */
import type { Redis } from "ioredis";

export type StreamStatus = "active" | "finishing" | "finished" | "failed";

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
  /** Epoch milliseconds: an active or finishing stream not touched by then is abandoned. */
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
   * Marks failed (with `failure`) up to `limit` active or finishing streams whose deadline is
   * at or before `now`, and returns them. Each stream is returned by one call only, whichever
   * node makes it.
   */
  expire(
    now: number,
    limit: number,
    ttlMs: number,
    failure: { reason: string; message: string },
  ): Promise<StreamRecord[]>;
}

// ---------------------------------------------------------------------------------------------
// Memory (one node)

export class MemoryStreamStore implements StreamStore {
  private readonly streams = new Map<string, { record: StreamRecord; expiresAt: number }>();

  private live(streamId: string): StreamRecord | undefined {
    const entry = this.streams.get(streamId);
    if (!entry) return undefined;
    if (entry.expiresAt <= Date.now()) {
      this.streams.delete(streamId);
      return undefined;
    }
    return entry.record;
  }

  private put(record: StreamRecord, ttlMs: number): void {
    this.streams.set(record.streamId, { record, expiresAt: Date.now() + ttlMs });
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
  ): Promise<StreamRecord[]> {
    const out: StreamRecord[] = [];
    for (const [id, entry] of this.streams) {
      if (entry.expiresAt <= now) {
        this.streams.delete(id);
        continue;
      }
      const r = entry.record;
      if ((r.status === "active" || r.status === "finishing") && r.deadline <= now) {
        applyTransition(r, "failed", { ttlMs, failure });
        this.put(r, ttlMs);
        out.push({ ...r });
        if (out.length >= limit) break;
      }
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

const CREATE = `
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, redis.call('HGETALL', KEYS[1])}
end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return {1, redis.call('HGETALL', KEYS[1])}`;

// ARGV: id, firstIndex, n, maxLength, deadline, ttl, length_1..length_n, delta_1..delta_n
const APPEND = `
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
  added = added + tonumber(ARGV[6 + i])
  parts[#parts + 1] = ARGV[6 + n + i]
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
return {'ok', applied, nextIndex + applied, st[4], length + added}`;

// ARGV: id, from, to, ttl, deadline|'', hasContent, content, contentLength, reason|'', message
const TRANSITION = `
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {'missing'} end
if st ~= ARGV[2] then return {'status', st} end
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
return {'ok', redis.call('HGETALL', KEYS[1])}`;

// KEYS: deadlines. ARGV: now, limit, ttl, key prefix, reason, message
const EXPIRE = `
local now = tonumber(ARGV[1])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  local key = ARGV[4] .. id
  local st = redis.call('HMGET', key, 'status', 'deadline')
  if (st[1] == 'active' or st[1] == 'finishing') and tonumber(st[2]) > now then
    redis.call('ZADD', KEYS[1], st[2], id)
  else
    redis.call('ZREM', KEYS[1], id)
    if st[1] == 'active' or st[1] == 'finishing' then
      redis.call('HSET', key, 'status', 'failed', 'failureReason', ARGV[5],
        'failureMessage', ARGV[6])
      redis.call('PEXPIRE', key, ARGV[3])
      out[#out + 1] = redis.call('HGETALL', key)
    end
  end
end
return out`;

type Reply = (string | number | Reply)[];

type ScriptClient = Redis & {
  chatStreamCreate(...args: (string | number)[]): Promise<Reply>;
  chatStreamAppend(...args: (string | number)[]): Promise<Reply>;
  chatStreamTransition(...args: (string | number)[]): Promise<Reply>;
  chatStreamExpire(...args: (string | number)[]): Promise<Reply>;
};

/** How long a call waits for a Redis connection that is (re)connecting before failing. */
const READY_WAIT_MS = 2000;

export class RedisStreamStore implements StreamStore {
  private readonly redis: ScriptClient;
  private readonly deadlines: string;
  private readonly keyPrefix: string;
  private waiting: Promise<void> | undefined;

  constructor(redis: Redis, prefix: string) {
    this.deadlines = `${prefix}:streams:deadlines`;
    this.keyPrefix = `${prefix}:stream:`;
    const scripts = [
      ["chatStreamCreate", CREATE, 2],
      ["chatStreamAppend", APPEND, 2],
      ["chatStreamTransition", TRANSITION, 2],
      ["chatStreamExpire", EXPIRE, 1],
    ] as const;
    for (const [name, lua, numberOfKeys] of scripts) {
      // Idempotent: defining the same command again on a shared client is harmless.
      if (!(name in redis)) redis.defineCommand(name, { lua, numberOfKeys });
    }
    this.redis = redis as ScriptClient;
  }

  private key(streamId: string): string {
    return this.keyPrefix + streamId;
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
    const [created, flat] = await this.redis.chatStreamCreate(
      this.key(record.streamId),
      this.deadlines,
      record.streamId,
      ttlMs,
      record.deadline,
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
    const reply = await this.redis.chatStreamAppend(
      this.key(streamId),
      this.deadlines,
      streamId,
      firstIndex,
      deltas.length,
      options.maxLength,
      options.deadline,
      options.ttlMs,
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
    const reply = await this.redis.chatStreamTransition(
      this.key(streamId),
      this.deadlines,
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
  ): Promise<StreamRecord[]> {
    await this.ready();
    const reply = await this.redis.chatStreamExpire(
      this.deadlines,
      now,
      limit,
      ttlMs,
      this.keyPrefix,
      failure.reason,
      failure.message,
    );
    return reply.map((flat) => fromFlat(flat as Reply));
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

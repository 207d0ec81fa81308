/**
 * The stream store shared by the nodes: Redis or a Redis Cluster, every change one Lua script
 * (the key layout is described in stream.repository.ts).
 */
import { isCluster, type RedisClient, slotTag } from "../redis/client.js";
import type {
  AppendOutcome,
  StreamRecord,
  StreamStatus,
  StreamStore,
  TransitionOptions,
  TransitionOutcome,
} from "./stream.repository.js";

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
//       chat-streams prefix, finishContent mode ('' leave, 'set', 'clear'), finishContent
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
if ARGV[12] == 'set' then
  redis.call('HSET', KEYS[1], 'finishContent', ARGV[13])
elseif ARGV[12] == 'clear' then
  redis.call('HDEL', KEYS[1], 'finishContent')
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
  local leased = st[1] == 'finishing' or st[1] == 'stopping'
  if (st[1] == 'active' or leased) and tonumber(st[2]) > now then
    redis.call('ZADD', KEYS[1], st[2], id)
  elseif st[1] == 'active' then
    redis.call('ZREM', KEYS[1], id)
    redis.call('HSET', key, 'status', 'failed', 'failureReason', ARGV[5],
      'failureMessage', ARGV[6])
    redis.call('PEXPIRE', key, ARGV[3])
    redis.call('ZREM', ARGV[7] .. st[3], id)
    out[#out + 1] = redis.call('HGETALL', key)
  elseif leased then
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
      options.finishContent === undefined ? "" : options.finishContent === null ? "clear" : "set",
      options.finishContent ?? "",
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
    const latest = new Map<string, { streamId: string; startedAt: number }>();
    for (const reply of replies) {
      reply.forEach((entry, i) => {
        const chatId = chatIds[i];
        if (chatId !== undefined && Array.isArray(entry) && entry.length === 2) {
          const found = { streamId: String(entry[0]), startedAt: Number(entry[1]) };
          // The latest open stream of the chat across the groups.
          if ((latest.get(chatId)?.startedAt ?? -1) < found.startedAt) latest.set(chatId, found);
        }
      });
    }
    // In the order asked, as from one Redis.
    for (const chatId of chatIds) {
      const found = latest.get(chatId);
      if (found) out.set(chatId, found);
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
    finishContent: h.finishContent ?? null,
  };
}

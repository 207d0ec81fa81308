/** The stream store of a single node: the rules of stream.repository.ts in this process's memory. */
import {
  type AppendOutcome,
  OPEN_STATUSES,
  type StreamRecord,
  type StreamStatus,
  type StreamStore,
  type TransitionOptions,
  type TransitionOutcome,
} from "./stream.repository.js";

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
      if (r.status === "active") {
        applyTransition(r, "failed", { ttlMs, failure });
        this.put(r, ttlMs);
      } else if (r.status === "finishing" || r.status === "stopping") {
        r.deadline = leaseUntil;
        this.put(r, leaseUntil - now + ttlMs);
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

export function applyTransition(
  r: StreamRecord,
  to: StreamStatus,
  options: TransitionOptions,
): void {
  r.status = to;
  if (options.deadline !== undefined) r.deadline = options.deadline;
  if (options.content !== undefined) {
    r.content = options.content;
    r.length = options.content.length;
  }
  if (options.finishContent !== undefined) r.finishContent = options.finishContent;
  if (options.failure) {
    r.failureReason = options.failure.reason;
    r.failureMessage = options.failure.message;
  }
}

/**
 * The sidebar and chat stores: plain external stores (`subscribe` + `getSnapshot`) whose
 * snapshots are frozen and change identity only when their content changes, so they plug into
 * React's `useSyncExternalStore` (or any other view layer) as they are.
 */
import type {
  ChatGenerating,
  ChatMessage,
  ChatSummary,
  CommandResults,
  GeneratingState,
  MessageBody,
  MessageDelta,
  MessageStreaming,
  StreamFailureReason,
  StreamSnapshot,
} from "@chat-backend/protocol";
import type { ChatClientError, ChatErrorCode } from "./errors.js";
import type { OutboxEntry, OutboxStatus } from "./outbox.js";
import { Store, sameItems } from "./util.js";

/** What `useSyncExternalStore` needs. */
export interface ReadableStore<T> {
  subscribe(listener: () => void): () => void;
  getSnapshot(): T;
}

// ---------------------------------------------------------------------------------------------
// Sidebar

export interface SidebarSnapshot {
  /** `idle` before the first load, `loading` during it, then `ready`. */
  readonly status: "idle" | "loading" | "ready";
  /** Ordered by `updatedAt` descending, then `id` descending (the server's order). */
  readonly chats: readonly ChatSummary[];
  /** Whether older chats exist beyond the loaded ones (`loadMore()`). */
  readonly hasMore: boolean;
}

export interface SidebarStore extends ReadableStore<SidebarSnapshot> {
  /** Loads the next page of older chats. */
  loadMore(): Promise<void>;
  /** Reloads the loaded range (done automatically after every (re)connect). */
  refresh(): Promise<void>;
}

type ListPage = (input: {
  limit?: number;
  cursor?: string;
}) => Promise<CommandResults["chat:list"]>;

const PAGE = 50;
/** Ended stream ids remembered to ignore late starts. */
const MAX_ENDED = 1000;

/**
 * ISO 8601 timestamps in one comparable form: a chat's `updatedAt` has microseconds, a
 * message's `createdAt` milliseconds; both become six fractional digits.
 */
function timeKey(iso: string): string {
  return iso.replace(/\.(\d{3})Z$/, ".$1000Z");
}

/**
 * The server's order: `updatedAt` descending, then `id` descending. `updatedAt` carries the
 * database's microseconds, and entries still equal (chats written by one batch share their
 * `updated_at`) are ordered by id, as the server orders them.
 */
function compareChats(a: ChatSummary, b: ChatSummary): number {
  const ta = timeKey(a.updatedAt);
  const tb = timeKey(b.updatedAt);
  if (ta !== tb) return ta < tb ? 1 : -1;
  return a.id < b.id ? 1 : a.id > b.id ? -1 : 0;
}

/** The later of two ISO 8601 UTC timestamps (same format, so they compare as strings). */
function laterIso(a: string, b: string): string {
  return timeKey(a) < timeKey(b) ? b : a;
}

function sameBody(a: MessageBody | null, b: MessageBody | null): boolean {
  return a === b || (!!a && !!b && a.role === b.role && a.content === b.content);
}

function sameChat(a: ChatSummary, b: ChatSummary): boolean {
  return (
    a.id === b.id &&
    a.title === b.title &&
    a.lastSeq === b.lastSeq &&
    a.version === b.version &&
    a.createdAt === b.createdAt &&
    a.updatedAt === b.updatedAt &&
    sameBody(a.lastMessage, b.lastMessage) &&
    sameGenerating(a.generating, b.generating)
  );
}

function sameGenerating(
  a: GeneratingState | null | undefined,
  b: GeneratingState | null | undefined,
): boolean {
  return a === b || (!!a && !!b && a.streamId === b.streamId && a.startedAt === b.startedAt);
}

/**
 * Combines a known entry with another one for the same chat. The one with the higher `version`
 * is the newer row (events from several nodes arrive in any order): an older one is ignored.
 * A message this device already applied (from its ack or `message:created`, ahead of the
 * entry's own `chat:updated`) is never taken back: its preview, `lastSeq` and time stay until
 * an entry that includes it arrives.
 */
function mergeChat(prev: ChatSummary | undefined, next: ChatSummary): ChatSummary {
  if (!prev) return Object.freeze({ ...next });
  // A chat created anew under the same id: its versions start again.
  if (timeKey(next.createdAt) > timeKey(prev.createdAt)) return Object.freeze({ ...next });
  if (timeKey(next.createdAt) < timeKey(prev.createdAt)) return prev;
  if (next.version < prev.version) return prev;
  let merged = next;
  if (next.lastSeq < prev.lastSeq) {
    merged = {
      ...next,
      lastMessage: prev.lastMessage,
      lastSeq: prev.lastSeq,
      updatedAt: laterIso(next.updatedAt, prev.updatedAt),
    };
  }
  // `chat:updated` may omit the generating state: absent means unchanged.
  if (merged.generating === undefined && prev.generating !== undefined) {
    merged = { ...merged, generating: prev.generating };
  }
  return sameChat(prev, merged) ? prev : Object.freeze({ ...merged });
}

/** Deleted chat ids remembered (bounded), so that a late event cannot bring one back. */
const MAX_TOMBSTONES = 1000;

export class SidebarState extends Store<SidebarSnapshot> implements SidebarStore {
  private readonly chats = new Map<string, ChatSummary>();
  /**
   * Chats deleted (by an event, this device, or found missing), with the `createdAt` of the
   * deleted chat when known. An entry for one of them that arrives later (another node's
   * `chat:updated` or `chat:created` for a change made just before the delete) is ignored,
   * unless it is a new chat under the same id (created later) or a listing made after the
   * deletion shows it.
   */
  private readonly tombstones = new Map<string, string | null>();
  private status: SidebarSnapshot["status"] = "idle";
  private nextCursor: string | null = null;
  /** Changes that arrive while a refresh is in flight, applied over its result. */
  private changes: Map<string, ChatSummary | null> | null = null;
  private refreshing: Promise<void> | null = null;
  private loadingMore: Promise<void> | null = null;

  private readonly list: ListPage;

  constructor(list: ListPage) {
    super(Object.freeze({ status: "idle", chats: Object.freeze([]), hasMore: false }));
    this.list = list;
  }

  upsert(chat: ChatSummary): void {
    if (this.buried(chat)) return;
    const merged = mergeChat(this.chats.get(chat.id), chat);
    this.changes?.set(chat.id, merged);
    this.chats.set(chat.id, merged);
    this.rebuild();
  }

  remove(chatId: string): void {
    this.changes?.set(chatId, null);
    const createdAt = this.chats.get(chatId)?.createdAt ?? this.tombstones.get(chatId) ?? null;
    this.tombstones.delete(chatId); // re-inserted last: the newest deletion is kept longest
    this.tombstones.set(chatId, createdAt);
    if (this.tombstones.size > MAX_TOMBSTONES) {
      this.tombstones.delete(this.tombstones.keys().next().value as string);
    }
    if (this.chats.delete(chatId)) this.rebuild();
  }

  /** Whether the chat is known to be deleted. */
  isDeleted(chatId: string): boolean {
    return this.tombstones.has(chatId);
  }

  /**
   * The chat exists after all: this device created it, or read it (`chat:open`) after it was
   * known to be deleted.
   */
  revive(chatId: string): void {
    this.tombstones.delete(chatId);
  }

  /** An entry for a deleted chat, not a new chat created under its id later. */
  private buried(chat: ChatSummary): boolean {
    if (!this.tombstones.has(chat.id)) return false;
    const createdAt = this.tombstones.get(chat.id);
    if (createdAt && timeKey(chat.createdAt) > timeKey(createdAt)) {
      this.tombstones.delete(chat.id);
      return false;
    }
    return true;
  }

  /** Stream ids seen ending (bounded), so that a late start of one is ignored. */
  private readonly ended = new Set<string>();

  /**
   * `chat:generating`: the entry's spinner. An end clears it only if it names the stream shown;
   * a start of a stream already seen ending is stale. `chat:list` values are authoritative.
   */
  applyGenerating(event: ChatGenerating): void {
    const prev = this.chats.get(event.chatId);
    let generating = prev?.generating ?? null;
    if (!event.active) {
      this.ended.add(event.streamId);
      if (this.ended.size > MAX_ENDED) {
        this.ended.delete(this.ended.values().next().value as string);
      }
      if (generating?.streamId === event.streamId) generating = null;
    } else if (!this.ended.has(event.streamId)) {
      // The latest active stream is shown.
      if (!generating || timeKey(generating.startedAt) <= timeKey(event.startedAt)) {
        generating = { streamId: event.streamId, startedAt: event.startedAt };
      }
    }
    if (!prev || sameGenerating(prev.generating, generating)) return;
    this.upsert({ ...prev, generating });
  }

  /**
   * This device's stored message (its ack): the entry's preview, `lastSeq` and order follow it
   * before the server's `chat:updated`. (Messages from elsewhere reach the sidebar only through
   * that `chat:updated`, so that each changes the entry once.)
   */
  applyMessage(message: ChatMessage): void {
    const prev = this.chats.get(message.chatId);
    if (!prev || message.seq <= prev.lastSeq) return;
    this.upsert({
      ...prev,
      lastMessage: { role: message.role, content: message.content },
      lastSeq: message.seq,
      updatedAt: laterIso(message.createdAt, prev.updatedAt),
    });
  }

  get(chatId: string): ChatSummary | undefined {
    return this.chats.get(chatId);
  }

  /**
   * A reload that starts after this call (`connection:resync`): one already in flight may have
   * read the server before the changes the resync is about, so it is waited for, not joined.
   */
  async resync(): Promise<void> {
    await this.refreshing?.catch(() => {});
    return this.refresh();
  }

  refresh(): Promise<void> {
    this.refreshing ??= this.reload().finally(() => {
      this.refreshing = null;
    });
    return this.refreshing;
  }

  private async reload(): Promise<void> {
    const target = Math.max(this.chats.size, PAGE);
    if (this.status === "idle") {
      this.status = "loading";
      this.rebuild();
    }
    this.changes = new Map();
    // Deletions known before the listing was asked for: a listing that still shows the chat
    // was read after the deletion, so the chat exists again (created anew under its id).
    const buriedBefore = new Set(this.tombstones.keys());
    try {
      const loaded: ChatSummary[] = [];
      let cursor: string | null = null;
      do {
        const page: CommandResults["chat:list"] = await this.list({
          limit: Math.min(200, Math.max(PAGE, target - loaded.length)),
          ...(cursor ? { cursor } : {}),
        });
        loaded.push(...page.chats);
        cursor = page.nextCursor;
      } while (cursor && loaded.length < target);
      const previous = new Map(this.chats);
      this.chats.clear();
      for (const chat of loaded) {
        if (buriedBefore.has(chat.id)) this.tombstones.delete(chat.id);
        this.chats.set(chat.id, mergeChat(previous.get(chat.id), chat));
      }
      for (const [id, change] of this.changes) {
        if (change === null) this.chats.delete(id);
        else this.chats.set(id, mergeChat(this.chats.get(id), change));
      }
      this.nextCursor = cursor;
      this.status = "ready";
      this.rebuild();
    } finally {
      this.changes = null;
    }
  }

  loadMore(): Promise<void> {
    if (!this.nextCursor) return this.refreshing ?? Promise.resolve();
    this.loadingMore ??= (async () => {
      try {
        const cursor = this.nextCursor;
        if (!cursor) return;
        const buriedBefore = new Set(this.tombstones.keys());
        const page = await this.list({ limit: PAGE, cursor });
        for (const chat of page.chats) {
          if (buriedBefore.has(chat.id)) this.tombstones.delete(chat.id);
          else if (this.tombstones.has(chat.id)) continue; // deleted while the page was read
          this.chats.set(chat.id, mergeChat(this.chats.get(chat.id), chat));
        }
        this.nextCursor = page.nextCursor;
        this.rebuild();
      } finally {
        this.loadingMore = null;
      }
    })();
    return this.loadingMore;
  }

  private rebuild(): void {
    const prev = this.getSnapshot();
    const chats = [...this.chats.values()].sort(compareChats);
    const hasMore = this.nextCursor !== null;
    if (prev.status === this.status && prev.hasMore === hasMore && sameItems(prev.chats, chats)) {
      return;
    }
    this.publish(
      Object.freeze({
        status: this.status,
        chats: sameItems(prev.chats, chats) ? prev.chats : Object.freeze(chats),
        hasMore,
      }),
    );
  }
}

// ---------------------------------------------------------------------------------------------
// One chat

export type ChatStatus = "idle" | "loading" | "ready" | "deleted" | "error";

/**
 * One row to render: a stored message, a streamed reply in progress, or an outbox entry. A
 * streamed reply's key is its streamId, which is also the `clientId` of the message it is
 * stored as, so the row keeps its key (no remount) when the stored message replaces it.
 */
export interface ChatItem {
  /** Stable key: the clientId (a streamed reply's streamId). */
  readonly key: string;
  readonly clientId: string;
  readonly role: ChatMessage["role"];
  /** The text (of a streamed reply: so far). */
  readonly content: string;
  /** The message's seq; null while it is not stored (or not yet in order). */
  readonly seq: number | null;
  /** When it was stored, sent, or (a streamed reply) started. */
  readonly createdAt: string;
  /**
   * `sent`: a stored message. A streamed reply: `streaming`, `stopped` (by a device; the
   * stored partial reply replaces it), `failed` (nothing stored: `error` says why). Otherwise
   * the outbox status of this device's unsent message.
   */
  readonly status: "sent" | OutboxStatus | "streaming" | "stopped";
  /** A reply stopped before it finished (streaming, or stored with `stopped: true`). */
  readonly stopped: boolean;
  readonly error: {
    readonly code: ChatErrorCode | StreamFailureReason;
    readonly message: string;
  } | null;
}

/** A streamed reply as the chat store holds it (`ChatSnapshot.streams`). */
export interface StreamingReply {
  readonly streamId: string;
  readonly role: "assistant" | "system";
  readonly startedAt: string;
  /** The text so far. */
  readonly content: string;
  readonly status: "streaming" | "stopped" | "failed";
  readonly failure: { readonly reason: StreamFailureReason; readonly message: string } | null;
}

export interface ChatSnapshot {
  readonly chatId: string;
  /** `idle` until opened; `deleted` when the chat is gone (deleted on any device). */
  readonly status: ChatStatus;
  /** Whether the chat is open (live) on this client. */
  readonly open: boolean;
  /** Stored messages, by seq, without gaps or duplicates. */
  readonly messages: readonly ChatMessage[];
  /** This device's outbox entries for the chat that are not among `messages` yet, in send order. */
  readonly pending: readonly OutboxEntry[];
  /**
   * Streamed replies not stored yet, oldest first: in progress, stopped (until the stored
   * partial reply arrives) or failed (until the chat is opened again).
   */
  readonly streams: readonly StreamingReply[];
  /** `messages`, then `streams`, then `pending`, as rows to render. */
  readonly items: readonly ChatItem[];
  /** Whether older messages exist before the first loaded one (`loadOlder()`). */
  readonly hasMoreBefore: boolean;
  /** The error of the last failed open, when `status` is `error`. */
  readonly error: ChatClientError | null;
}

export interface ChatStore extends ReadableStore<ChatSnapshot> {
  readonly chatId: string;
  /** Loads a page of older messages in front of the loaded ones. */
  loadOlder(limit?: number): Promise<void>;
}

const itemOfMessage = new WeakMap<ChatMessage, ChatItem>();
const itemOfEntry = new WeakMap<OutboxEntry, ChatItem>();

function messageItem(m: ChatMessage): ChatItem {
  let item = itemOfMessage.get(m);
  if (!item) {
    item = Object.freeze({
      key: m.clientId,
      clientId: m.clientId,
      role: m.role,
      content: m.content,
      seq: m.seq,
      createdAt: m.createdAt,
      status: "sent" as const,
      stopped: m.stopped === true,
      error: null,
    });
    itemOfMessage.set(m, item);
  }
  return item;
}

/** `clashes`: a stored message has the entry's clientId (a CONFLICT): the row needs its own key. */
function entryItem(e: OutboxEntry, clashes: boolean): ChatItem {
  let item = itemOfEntry.get(e);
  if (!item || (item.key !== e.clientId) !== clashes) {
    item = Object.freeze({
      key: clashes ? `${e.clientId}:failed` : e.clientId,
      clientId: e.clientId,
      role: "user" as const,
      content: e.content,
      seq: null,
      createdAt: e.createdAt,
      status: e.status,
      stopped: false,
      error: e.error,
    });
    itemOfEntry.set(e, item);
  }
  return item;
}

const itemOfStream = new WeakMap<StreamingReply, ChatItem>();

function streamItem(r: StreamingReply): ChatItem {
  let item = itemOfStream.get(r);
  if (!item) {
    item = Object.freeze({
      key: r.streamId,
      clientId: r.streamId,
      role: r.role,
      content: r.content,
      seq: null,
      createdAt: r.startedAt,
      status: r.status,
      stopped: r.status === "stopped",
      error: r.failure
        ? Object.freeze({ code: r.failure.reason, message: r.failure.message })
        : null,
    });
    itemOfStream.set(r, item);
  }
  return item;
}

/** What applying a delta did: `gap` means text before it was missed (re-snapshot). */
export type DeltaOutcome = "applied" | "ignored" | "gap";

export interface ChatStateHooks {
  /** This chat's unconfirmed outbox entries, in send order. */
  pending(chatId: string): readonly OutboxEntry[];
  loadOlder(state: ChatState, limit?: number): Promise<void>;
}

/**
 * The state of one chat. Changed only through its own methods (by the client's chat
 * coordination); read by the app through `ChatStore`.
 */
export class ChatState extends Store<ChatSnapshot> implements ChatStore {
  private currentStatus: ChatStatus = "idle";
  private isOpen = false;
  private lastError: ChatClientError | null = null;
  private moreBefore = false;
  /** Loaded messages, contiguous by seq. */
  private messages: ChatMessage[] = [];
  /** Received messages beyond a gap, waiting for the gap to be filled. */
  private readonly ahead = new Map<number, ChatMessage>();
  private readonly clientIds = new Set<string>();
  /** The last seq of the contiguous run (0 for an empty chat). */
  private contiguousSeq = 0;

  readonly chatId: string;
  private readonly hooks: ChatStateHooks;

  constructor(chatId: string, hooks: ChatStateHooks) {
    super(
      Object.freeze({
        chatId,
        status: "idle" as const,
        open: false,
        messages: Object.freeze([]),
        pending: Object.freeze([]),
        streams: Object.freeze([]),
        items: Object.freeze([]),
        hasMoreBefore: false,
        error: null,
      }),
    );
    this.chatId = chatId;
    this.hooks = hooks;
  }

  // -------------------------------------------------------------------------------------------
  // Streamed replies

  /** Streamed replies not stored yet, by streamId (each value frozen, replaced on change). */
  private readonly streams = new Map<string, StreamingReply>();
  /** Deltas beyond a stream's text, waiting for the text before them (another node's delta). */
  private readonly aheadDeltas = new Map<string, MessageDelta[]>();

  private setStream(reply: StreamingReply): void {
    this.streams.set(reply.streamId, Object.freeze(reply));
  }

  /** `message:streaming`: a reply began (ignored when already known or already stored). */
  streamStarted(event: MessageStreaming): void {
    if (this.status !== "ready" || this.streams.has(event.streamId)) return;
    if (this.clientIds.has(event.streamId)) return;
    this.setStream({
      streamId: event.streamId,
      role: event.role,
      startedAt: event.startedAt,
      content: "",
      status: "streaming",
      failure: null,
    });
    this.rebuild();
  }

  /**
   * `message:delta`, placed by offset: the part already shown is dropped; a delta beyond the
   * text waits for the text before it and reports `gap` (the client re-snapshots if the gap is
   * still there after a moment).
   */
  streamDelta(delta: MessageDelta): DeltaOutcome {
    // Kept while the chat opens (it may precede the ack): applyStreams places it on the snapshot.
    if (this.status === "loading")
      this.aheadDeltas.set(delta.streamId, [
        ...(this.aheadDeltas.get(delta.streamId) ?? []),
        delta,
      ]);
    if (this.status !== "ready" || this.clientIds.has(delta.streamId)) return "ignored";
    let reply = this.streams.get(delta.streamId);
    if (!reply) {
      // Its start was missed (it began while this chat was being opened).
      reply = {
        streamId: delta.streamId,
        role: "assistant",
        startedAt: new Date().toISOString(),
        content: "",
        status: "streaming",
        failure: null,
      };
      this.setStream(reply);
    }
    if (reply.status !== "streaming") return "ignored";
    const content = placeDelta(reply.content, delta);
    if (content === undefined) {
      const ahead = this.aheadDeltas.get(delta.streamId) ?? [];
      ahead.push(delta);
      this.aheadDeltas.set(delta.streamId, ahead);
      this.rebuild();
      return "gap";
    }
    this.setStream({ ...reply, content: this.drainDeltas(delta.streamId, content) });
    this.rebuild();
    return "applied";
  }

  /** Whether a stream still waits for text before a delta it received. */
  hasStreamGap(streamId: string): boolean {
    return (this.aheadDeltas.get(streamId)?.length ?? 0) > 0;
  }

  /** Applies waiting deltas that now continue the text. */
  private drainDeltas(streamId: string, text: string): string {
    const ahead = this.aheadDeltas.get(streamId);
    if (!ahead) return text;
    let content = text;
    for (let progressed = true; progressed; ) {
      progressed = false;
      for (const [i, d] of ahead.entries()) {
        const next = placeDelta(content, d);
        if (next === undefined) continue;
        content = next;
        ahead.splice(i, 1);
        progressed = true;
        break;
      }
    }
    if (ahead.length === 0) this.aheadDeltas.delete(streamId);
    return content;
  }

  /** `message:stopped` (or the ack of this device's stop): shown as stopped at once. */
  streamStopped(streamId: string): void {
    const reply = this.streams.get(streamId);
    if (reply?.status !== "streaming") return;
    this.aheadDeltas.delete(streamId);
    this.setStream({ ...reply, status: "stopped" });
    this.rebuild();
  }

  /** `message:failed`: nothing was stored; kept as failed until the chat is opened again. */
  streamFailed(streamId: string, failure: { reason: StreamFailureReason; message: string }): void {
    const reply = this.streams.get(streamId);
    if (!reply || reply.status === "failed") return;
    this.aheadDeltas.delete(streamId);
    this.setStream({ ...reply, status: "failed", failure: { ...failure } });
    this.rebuild();
  }

  /**
   * `chat:open`'s `streams` (on open, rejoin and re-snapshot): the replies in progress now.
   * Known text that is longer is kept (deltas may have got ahead of the snapshot; both are
   * prefixes of one text). Replies shown as streaming that are no longer in progress ended
   * while this device was away or between events: their stored message (if any) comes with the
   * page, the catch-up or `message:created`, so they are dropped, as are failed and empty
   * stopped ones.
   */
  applyStreams(snapshots: readonly StreamSnapshot[]): void {
    const live = new Set(snapshots.map((s) => s.streamId));
    for (const [id, reply] of this.streams) {
      if (live.has(id)) continue;
      if (reply.status === "stopped" && reply.content.length > 0) continue;
      this.streams.delete(id);
      this.aheadDeltas.delete(id);
    }
    for (const s of snapshots) {
      if (this.clientIds.has(s.streamId)) continue;
      const known = this.streams.get(s.streamId);
      if (known && known.status !== "streaming") continue;
      const content = known && known.content.length > s.content.length ? known.content : s.content;
      this.setStream({
        streamId: s.streamId,
        role: s.role,
        startedAt: s.startedAt,
        content: this.drainDeltas(s.streamId, content),
        status: "streaming",
        failure: null,
      });
    }
    this.rebuild();
  }

  loadOlder(limit?: number): Promise<void> {
    return this.hooks.loadOlder(this, limit);
  }

  get status(): ChatStatus {
    return this.currentStatus;
  }

  /** Whether the chat is open (live) on this client. */
  get open(): boolean {
    return this.isOpen;
  }

  get hasMoreBefore(): boolean {
    return this.moreBefore;
  }

  /** The last seq of the contiguous run of loaded messages (0 for an empty chat). */
  get lastSeq(): number {
    return this.contiguousSeq;
  }

  get firstSeq(): number | undefined {
    return this.messages[0]?.seq;
  }

  get hasGap(): boolean {
    return this.ahead.size > 0;
  }

  hasClientId(clientId: string): boolean {
    return this.clientIds.has(clientId);
  }

  /** A page from `chat:open`: replaces the loaded messages (newer ones already seen are kept). */
  load(page: readonly ChatMessage[], hasMore: boolean): void {
    const sorted = [...page].sort((a, b) => a.seq - b.seq);
    const last = sorted.at(-1)?.seq ?? 0;
    for (const m of this.messages) if (m.seq > last) this.ahead.set(m.seq, m);
    this.messages = sorted.map((m) => Object.freeze({ ...m }));
    this.contiguousSeq = last;
    this.moreBefore = hasMore;
    this.currentStatus = "ready";
    this.lastError = null;
    this.drain();
    this.rebuild();
  }

  /** Older messages from `message:history`, in front of the loaded ones. */
  prepend(older: readonly ChatMessage[], hasMore: boolean): void {
    const first = this.firstSeq ?? this.lastSeq + 1;
    const add = older
      .filter((m) => m.seq < first)
      .sort((a, b) => a.seq - b.seq)
      .map((m) => Object.freeze({ ...m }));
    // Only a run that ends right before the first loaded message keeps the list gap-free.
    const run: ChatMessage[] = [];
    for (let i = add.length - 1, want = first - 1; i >= 0 && add[i]?.seq === want; i--, want--) {
      run.unshift(add[i] as ChatMessage);
    }
    this.messages = [...run, ...this.messages];
    this.moreBefore = run.length === add.length ? hasMore : true;
    this.rebuild();
  }

  /**
   * Messages from the live stream, a sync page or an ack. Returns those appended at the end (in
   * seq order); anything beyond a gap waits in `ahead` until the gap is filled.
   */
  ingest(messages: readonly ChatMessage[]): ChatMessage[] {
    if (this.status !== "ready" && this.status !== "loading") return [];
    for (const m of messages) {
      if (this.status === "ready" && m.seq <= this.lastSeq) continue;
      if (!this.ahead.has(m.seq)) this.ahead.set(m.seq, Object.freeze({ ...m }));
    }
    if (this.status !== "ready") return [];
    const appended = this.drain();
    if (appended.length) this.rebuild();
    return appended;
  }

  private drain(): ChatMessage[] {
    const appended: ChatMessage[] = [];
    for (const seq of [...this.ahead.keys()]) if (seq <= this.lastSeq) this.ahead.delete(seq);
    for (
      let next = this.ahead.get(this.lastSeq + 1);
      next;
      next = this.ahead.get(this.lastSeq + 1)
    ) {
      this.ahead.delete(next.seq);
      appended.push(next);
      this.contiguousSeq = next.seq;
    }
    if (appended.length) this.messages = [...this.messages, ...appended];
    return appended;
  }

  beginLoad(): void {
    this.isOpen = true;
    if (this.status !== "ready") {
      this.currentStatus = "loading";
      this.lastError = null;
    }
    this.rebuild();
  }

  loadFailed(error: ChatClientError): void {
    if (this.status === "loading") {
      this.currentStatus = "error";
      this.lastError = error;
      this.ahead.clear();
    }
    this.rebuild();
  }

  setOpen(open: boolean): void {
    this.isOpen = open;
    this.rebuild();
  }

  markDeleted(): void {
    this.currentStatus = "deleted";
    this.isOpen = false;
    this.ahead.clear();
    this.streams.clear();
    this.aheadDeltas.clear();
    this.rebuild();
  }

  /** Recomputes the snapshot (also when the outbox changed); publishes only real changes. */
  rebuild(): void {
    this.clientIds.clear();
    for (const m of this.messages) this.clientIds.add(m.clientId);
    const prev = this.getSnapshot();
    const messages = sameItems(prev.messages, this.messages)
      ? prev.messages
      : Object.freeze([...this.messages]);
    // An entry is hidden once a stored message is it: same clientId and same content (the
    // server stores a clientId once). One with another message's clientId but other content
    // (refused with CONFLICT, or being retried) stays visible.
    const stored = new Map<string, string>();
    for (const m of this.messages) stored.set(m.clientId, m.content);
    const pendingNow = this.hooks
      .pending(this.chatId)
      .filter((e) => stored.get(e.clientId) !== e.content);
    const pending = sameItems(prev.pending, pendingNow) ? prev.pending : Object.freeze(pendingNow);
    // A stored message replaces the streamed reply it was streamed as (same clientId).
    for (const id of this.streams.keys()) {
      if (this.clientIds.has(id)) {
        this.streams.delete(id);
        this.aheadDeltas.delete(id);
      }
    }
    const streamsNow = [...this.streams.values()].sort((a, b) =>
      a.startedAt < b.startedAt ? -1 : a.startedAt > b.startedAt ? 1 : 0,
    );
    const streams = sameItems(prev.streams, streamsNow) ? prev.streams : Object.freeze(streamsNow);
    if (
      prev.status === this.status &&
      prev.open === this.open &&
      prev.hasMoreBefore === this.hasMoreBefore &&
      prev.error === this.lastError &&
      prev.messages === messages &&
      prev.pending === pending &&
      prev.streams === streams
    ) {
      return;
    }
    const items =
      prev.messages === messages && prev.pending === pending && prev.streams === streams
        ? prev.items
        : Object.freeze([
            ...messages.map(messageItem),
            ...streams.map(streamItem),
            ...pending.map((e) => entryItem(e, this.clientIds.has(e.clientId))),
          ]);
    this.publish(
      Object.freeze({
        chatId: this.chatId,
        status: this.status,
        open: this.open,
        messages,
        pending,
        streams,
        items,
        hasMoreBefore: this.hasMoreBefore,
        error: this.lastError,
      }),
    );
  }
}

/** The text with `delta` placed by its offset; undefined when the delta starts beyond it. */
function placeDelta(text: string, delta: MessageDelta): string | undefined {
  if (delta.offset > text.length) return undefined;
  const end = delta.offset + delta.delta.length;
  return end <= text.length ? text : text + delta.delta.slice(text.length - delta.offset);
}

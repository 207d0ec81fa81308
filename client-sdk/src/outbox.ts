/**
 * The outbox: messages the user sent that the server has not acknowledged yet. Entries are
 * kept in an `OutboxStorage` so that they survive a reload or an app restart, and are resent
 * with the same `clientId` (the server stores each clientId once per chat). This file holds
 * both the queue (`Outbox`: ordering, sending, retry, resend after a reconnect, failed and
 * discarded entries) and the storage adapters.
 */
import type { ChatMessage, CommandResults } from "@chat-backend/protocol";
import { ErrorCode, Limits } from "@chat-backend/protocol";
import {
  ChatClientError,
  type ChatErrorCode,
  ClientErrorCode,
  toChatClientError,
} from "./errors.js";
import type { ReadableStore } from "./stores.js";
import { backoff, randomId, Store, sameItems, Timers } from "./util.js";

/** What the storage keeps of a message that is not confirmed yet. */
export interface OutboxRecord {
  clientId: string;
  chatId: string;
  content: string;
  /** ISO 8601, the device's clock: when the user sent it. */
  createdAt: string;
  /** `failed`: refused by the server for good (kept until retried or discarded). */
  status: "pending" | "failed";
  error?: { code: ChatErrorCode; message: string } | undefined;
}

/**
 * Where the outbox is persisted. Every method may be asynchronous. Keep one storage per user
 * (e.g. a key or database name with the user id) so one account never sends another's drafts.
 */
export interface OutboxStorage {
  /** Every stored record, in any order (the SDK orders by `createdAt`). */
  getAll(): Promise<OutboxRecord[]>;
  /** Inserts or replaces the record with this `clientId`. */
  set(record: OutboxRecord): Promise<void>;
  delete(clientId: string): Promise<void>;
}

export type OutboxStatus = "pending" | "sending" | "failed" | "confirmed";

/** An outbox entry as the app sees it (immutable; replaced on every change). */
export interface OutboxEntry {
  readonly clientId: string;
  readonly chatId: string;
  readonly content: string;
  readonly createdAt: string;
  readonly status: OutboxStatus;
  /** Send attempts so far. */
  readonly attempts: number;
  /** Why it failed (status `failed`), or the last retryable error while it is retried. */
  readonly error: { readonly code: ChatErrorCode; readonly message: string } | null;
  /** The stored message, once confirmed. */
  readonly message: ChatMessage | null;
}

/** The default: entries live as long as the client (nothing survives a reload). */
export function memoryOutboxStorage(): OutboxStorage {
  const records = new Map<string, OutboxRecord>();
  return {
    async getAll() {
      return [...records.values()].map((r) => ({ ...r }));
    },
    async set(record) {
      records.set(record.clientId, { ...record });
    },
    async delete(clientId) {
      records.delete(clientId);
    },
  };
}

/**
 * The `getItem`/`setItem`/`removeItem` shape shared by the browser's `localStorage` (sync) and
 * React Native's `AsyncStorage` (async).
 */
export interface KeyValueStorage {
  getItem(key: string): string | null | Promise<string | null>;
  setItem(key: string, value: string): void | Promise<void>;
  removeItem(key: string): void | Promise<void>;
}

/**
 * The outbox as one JSON value under `key` of a key-value storage: `localStorage` in a browser,
 * `AsyncStorage` in React Native. Writes are serialized, so the stored value is always whole.
 */
export function keyValueOutboxStorage(kv: KeyValueStorage, key = "chat-outbox"): OutboxStorage {
  let cache: Map<string, OutboxRecord> | undefined;
  let chain: Promise<unknown> = Promise.resolve();

  const load = async (): Promise<Map<string, OutboxRecord>> => {
    if (cache) return cache;
    const raw = await kv.getItem(key);
    const map = new Map<string, OutboxRecord>();
    if (raw) {
      try {
        for (const r of JSON.parse(raw) as OutboxRecord[]) map.set(r.clientId, r);
      } catch {
        // A corrupt value is dropped rather than blocking every future send.
      }
    }
    cache ??= map;
    return cache;
  };
  const write = (change: (map: Map<string, OutboxRecord>) => void): Promise<void> => {
    const next = chain.then(async () => {
      const map = await load();
      change(map);
      if (map.size === 0) await kv.removeItem(key);
      else await kv.setItem(key, JSON.stringify([...map.values()]));
    });
    chain = next.catch(() => {});
    return next;
  };

  return {
    async getAll() {
      await chain;
      return [...(await load()).values()].map((r) => ({ ...r }));
    },
    set: (record) => write((map) => map.set(record.clientId, { ...record })),
    delete: (clientId) => write((map) => map.delete(clientId)),
  };
}

/**
 * The outbox in IndexedDB (browsers): one object store keyed by `clientId`. Use a database name
 * per user, e.g. `indexedDbOutboxStorage(\`chat-outbox-${userId}\`)`.
 */
export function indexedDbOutboxStorage(
  dbName = "chat-outbox",
  factory: IDBFactory = globalThis.indexedDB,
): OutboxStorage {
  const STORE = "outbox";
  let db: Promise<IDBDatabase> | undefined;
  const open = () => {
    db ??= new Promise<IDBDatabase>((resolve, reject) => {
      const req = factory.open(dbName, 1);
      req.onupgradeneeded = () => req.result.createObjectStore(STORE, { keyPath: "clientId" });
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
    return db;
  };
  const run = async <T>(
    mode: IDBTransactionMode,
    op: (store: IDBObjectStore) => IDBRequest<T>,
  ): Promise<T> => {
    const tx = (await open()).transaction(STORE, mode);
    const req = op(tx.objectStore(STORE));
    return new Promise<T>((resolve, reject) => {
      tx.oncomplete = () => resolve(req.result);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  };
  return {
    getAll: () => run("readonly", (s) => s.getAll() as IDBRequest<OutboxRecord[]>),
    set: async (record) => {
      await run("readwrite", (s) => s.put({ ...record }));
    },
    delete: async (clientId) => {
      await run("readwrite", (s) => s.delete(clientId));
    },
  };
}

// ---------------------------------------------------------------------------------------------
// The queue

export interface OutboxStore extends ReadableStore<readonly OutboxEntry[]> {
  /** Sends a failed entry again (same clientId). */
  retry(clientId: string): void;
  /** Drops an entry (pending or failed); its `sendMessage` promise rejects with CANCELLED. */
  discard(clientId: string): Promise<void>;
}

type SendResult = CommandResults["message:send"];

/** What the outbox needs from the rest of the client. */
export interface OutboxHooks {
  /** Throws `CLOSED` or `SIGNED_OUT` when nothing may be queued. */
  check(): void;
  /** Whether a send may be attempted now (connected, not signed out, not closed). */
  canSend(): boolean;
  send(input: { chatId: string; clientId: string; content: string }): Promise<SendResult>;
  /** The server stored an entry's message (the sidebar and the chat store follow it). */
  confirmed(message: ChatMessage): void;
  /** A chat's entries changed (its store rebuilds; `entry` is the one that changed, if any). */
  changed(chatId: string, entry?: OutboxEntry): void;
  /** Whether an open chat still waits (behind a gap) for the message with this seq. */
  awaiting(chatId: string, seq: number): boolean;
  report(err: unknown, context: string): void;
}

/** Errors after which a message is never sent again unchanged. */
const permanentSendErrors: ReadonlySet<string> = new Set([
  ErrorCode.NOT_FOUND,
  ErrorCode.INVALID_PAYLOAD,
  ErrorCode.CONFLICT,
  ErrorCode.UNKNOWN_COMMAND,
  ErrorCode.FORBIDDEN,
]);

const byCreatedAt = (a: { createdAt: string }, b: { createdAt: string }) =>
  a.createdAt < b.createdAt ? -1 : a.createdAt > b.createdAt ? 1 : 0;

/**
 * The queue of unconfirmed messages, as a store of the entries that are not confirmed, in send
 * order. Entries of one chat are sent one at a time, in order; a retryable failure is retried
 * with backoff (or after the reconnect when the connection dropped), a permanent one leaves the
 * entry `failed` until `retry` or `discard`.
 */
export class Outbox extends Store<readonly OutboxEntry[]> implements OutboxStore {
  /** Resolves once the entries have been read from the storage. */
  readonly ready: Promise<void>;

  private readonly storage: OutboxStorage;
  private readonly hooks: OutboxHooks;
  private readonly timers = new Timers();
  private readonly entries = new Map<string, OutboxEntry>();
  private readonly waiters = new Map<
    string,
    { resolve: (r: SendResult) => void; reject: (e: ChatClientError) => void }
  >();
  private readonly flushing = new Set<string>();
  private readonly flushAgain = new Set<string>();
  private readonly storageOps = new Set<Promise<unknown>>();
  private closed = false;

  constructor(storage: OutboxStorage, hooks: OutboxHooks) {
    super(Object.freeze([]));
    this.storage = storage;
    this.hooks = hooks;
    this.ready = this.load();
  }

  /** Queues a message and sends it when it can; resolves with the stored message. */
  async enqueue(input: {
    chatId: string;
    content: string;
    clientId?: string;
  }): Promise<SendResult> {
    this.hooks.check();
    const problem =
      input.content.trim().length === 0
        ? "must not be blank"
        : input.content.length > Limits.MAX_MESSAGE_CHARS
          ? `must be at most ${Limits.MAX_MESSAGE_CHARS} characters`
          : undefined;
    if (problem) {
      throw new ChatClientError(ErrorCode.INVALID_PAYLOAD, "The message is invalid", {
        details: [{ path: "content", message: problem }],
        command: "message:send",
      });
    }
    const clientId = input.clientId ?? randomId();
    const waiting = new Promise<SendResult>((resolve, reject) => {
      const previous = this.waiters.get(clientId);
      this.waiters.set(clientId, {
        resolve: (r) => {
          previous?.resolve(r);
          resolve(r);
        },
        reject: (e) => {
          previous?.reject(e);
          reject(e);
        },
      });
    });
    if (!this.entries.has(clientId)) {
      const entry: OutboxEntry = Object.freeze({
        clientId,
        chatId: input.chatId,
        content: input.content,
        createdAt: new Date().toISOString(),
        status: "pending",
        attempts: 0,
        error: null,
        message: null,
      });
      this.entries.set(clientId, entry);
      this.changed(entry.chatId, entry);
      try {
        await this.track(this.storage.set(toRecord(entry)));
      } catch (e) {
        this.hooks.report(e, "outbox storage");
      }
    }
    void this.flush(input.chatId);
    return waiting;
  }

  /** Sends every chat's pending entries (after a connect). */
  flushAll(): void {
    for (const chatId of new Set([...this.entries.values()].map((e) => e.chatId))) {
      void this.flush(chatId);
    }
  }

  readonly retry = (clientId: string): void => {
    const entry = this.entries.get(clientId);
    if (entry?.status !== "failed") return;
    const next: OutboxEntry = Object.freeze({
      ...entry,
      status: "pending",
      attempts: 0,
      error: null,
    });
    this.entries.set(clientId, next);
    this.persist(next);
    this.changed(entry.chatId, next);
    void this.flush(entry.chatId);
  };

  readonly discard = async (clientId: string): Promise<void> => {
    const entry = this.entries.get(clientId);
    if (!entry || entry.status === "confirmed") return;
    this.entries.delete(clientId);
    this.settle(clientId, new ChatClientError(ClientErrorCode.CANCELLED, "Discarded"));
    this.changed(entry.chatId);
    await this.track(this.storage.delete(clientId));
  };

  /** The chat is gone: its entries are dropped and their sends reject with NOT_FOUND. */
  dropChat(chatId: string): void {
    const gone = new ChatClientError(ErrorCode.NOT_FOUND, "The chat was deleted");
    for (const entry of [...this.entries.values()]) {
      if (entry.chatId !== chatId) continue;
      this.entries.delete(entry.clientId);
      this.track(this.storage.delete(entry.clientId)).catch((e) =>
        this.hooks.report(e, "outbox storage"),
      );
      this.settle(entry.clientId, gone);
    }
    this.changed(chatId);
  }

  /** Drops confirmed entries once their message is in the chat's list (or nobody shows it). */
  collectConfirmed(chatId: string): void {
    let changed = false;
    for (const entry of [...this.entries.values()]) {
      if (entry.chatId !== chatId || entry.status !== "confirmed" || !entry.message) continue;
      // Kept (shown as confirmed) only while its message waits behind a gap in an open chat.
      if (!this.hooks.awaiting(chatId, entry.message.seq)) {
        this.entries.delete(entry.clientId);
        changed = true;
      }
    }
    if (changed) this.changed(chatId);
  }

  /** Entries of one chat that are not confirmed-and-shown, in send order. */
  pendingFor(chatId: string): OutboxEntry[] {
    return [...this.entries.values()].filter((e) => e.chatId === chatId).sort(byCreatedAt);
  }

  /** Rejects every waiting send with CLOSED and waits for the storage writes in flight. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.timers.clear();
    const closed = new ChatClientError(ClientErrorCode.CLOSED, "The client was closed");
    for (const w of this.waiters.values()) w.reject(closed);
    this.waiters.clear();
    await Promise.allSettled([...this.storageOps]);
  }

  private async load(): Promise<void> {
    let records: OutboxRecord[] = [];
    try {
      records = await this.storage.getAll();
    } catch (e) {
      this.hooks.report(e, "outbox storage");
    }
    records.sort(byCreatedAt);
    const chats = new Set<string>();
    for (const r of records) {
      if (this.entries.has(r.clientId)) continue;
      this.entries.set(
        r.clientId,
        Object.freeze({
          clientId: r.clientId,
          chatId: r.chatId,
          content: r.content,
          createdAt: r.createdAt,
          status: r.status,
          attempts: 0,
          error: r.error ? Object.freeze({ ...r.error }) : null,
          message: null,
        }),
      );
      chats.add(r.chatId);
    }
    for (const chatId of chats) this.changed(chatId);
  }

  /** Sends a chat's pending entries one at a time, in order, until none is left or offline. */
  private async flush(chatId: string): Promise<void> {
    if (this.flushing.has(chatId)) {
      this.flushAgain.add(chatId);
      return;
    }
    this.flushing.add(chatId);
    try {
      await this.ready;
      for (let failures = 0; ; ) {
        if (this.closed || !this.hooks.canSend()) return;
        const entry = this.pendingFor(chatId).find((e) => e.status === "pending");
        if (!entry) return;
        this.update(entry.clientId, { status: "sending", attempts: entry.attempts + 1 });
        try {
          const data = await this.hooks.send({
            chatId,
            clientId: entry.clientId,
            content: entry.content,
          });
          failures = 0;
          this.confirm(entry.clientId, data);
        } catch (e) {
          const err = toChatClientError(e, "message:send");
          if (!this.entries.has(entry.clientId)) continue;
          if (permanentSendErrors.has(err.code)) {
            this.fail(entry.clientId, err);
            continue;
          }
          this.update(entry.clientId, {
            status: "pending",
            error: { code: err.code, message: err.message },
          });
          if (!this.hooks.canSend()) return; // resent after the reconnect
          await this.timers.sleep(err.retryAfterMs ?? backoff(failures++));
        }
      }
    } finally {
      this.flushing.delete(chatId);
      if (this.flushAgain.delete(chatId)) void this.flush(chatId);
    }
  }

  private confirm(clientId: string, data: SendResult): void {
    const entry = this.entries.get(clientId);
    if (!entry) return;
    const confirmed: OutboxEntry = Object.freeze({
      ...entry,
      status: "confirmed" as const,
      error: null,
      message: data.message,
    });
    this.entries.set(clientId, confirmed);
    this.track(this.storage.delete(clientId)).catch((e) => this.hooks.report(e, "outbox storage"));
    const waiter = this.waiters.get(clientId);
    this.waiters.delete(clientId);
    waiter?.resolve(data);
    this.changed(entry.chatId, confirmed);
    this.hooks.confirmed(data.message);
    this.collectConfirmed(entry.chatId);
  }

  private fail(clientId: string, err: ChatClientError): void {
    const entry = this.entries.get(clientId);
    if (!entry) return;
    const failed: OutboxEntry = Object.freeze({
      ...entry,
      status: "failed" as const,
      error: Object.freeze({ code: err.code, message: err.message }),
    });
    this.entries.set(clientId, failed);
    this.persist(failed);
    this.settle(clientId, err);
    this.changed(entry.chatId, failed);
  }

  private settle(clientId: string, err: ChatClientError): void {
    const waiter = this.waiters.get(clientId);
    this.waiters.delete(clientId);
    waiter?.reject(err);
  }

  private update(clientId: string, patch: Partial<OutboxEntry>): void {
    const entry = this.entries.get(clientId);
    if (!entry) return;
    const next = Object.freeze({ ...entry, ...patch });
    this.entries.set(clientId, next);
    this.changed(entry.chatId, next);
  }

  private persist(entry: OutboxEntry): void {
    this.track(this.storage.set(toRecord(entry))).catch((e) =>
      this.hooks.report(e, "outbox storage"),
    );
  }

  /** Publishes the unconfirmed entries (if they changed) and tells the chat's store. */
  private changed(chatId: string, entry?: OutboxEntry): void {
    const all = [...this.entries.values()]
      .filter((e) => e.status !== "confirmed")
      .sort(byCreatedAt);
    if (!sameItems(this.getSnapshot(), all)) this.publish(Object.freeze(all));
    this.hooks.changed(chatId, entry);
  }

  private track<T>(op: Promise<T>): Promise<T> {
    this.storageOps.add(op);
    const done = () => this.storageOps.delete(op);
    op.then(done, done);
    return op;
  }
}

function toRecord(entry: OutboxEntry): OutboxRecord {
  return {
    clientId: entry.clientId,
    chatId: entry.chatId,
    content: entry.content,
    createdAt: entry.createdAt,
    status: entry.status === "failed" ? "failed" : "pending",
    ...(entry.error && entry.status === "failed" ? { error: { ...entry.error } } : {}),
  };
}

/**
 * The outbox: messages the user sent that the server has not acknowledged yet. Entries are
 * kept in an `OutboxStorage` so that they survive a reload or an app restart, and are resent
 * with the same `clientId` (the server stores each clientId once per chat).
 */
import type { ChatMessage } from "@chat-backend/protocol";
import type { ChatErrorCode } from "./errors.js";

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

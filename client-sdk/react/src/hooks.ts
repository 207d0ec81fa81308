import {
  type ChatClient,
  ChatClientError,
  type ChatSnapshot,
  ClientErrorCode,
  type CommandInput,
  type CommandResults,
  type ConnectionState,
  type ConnectionStatus,
  type OutboxEntry,
  type SidebarSnapshot,
  type UserStats,
} from "@chat-backend/client";
import { useCallback, useEffect, useMemo, useSyncExternalStore } from "react";
import { useProvided } from "./provider.js";

const noSubscribe = () => () => {};
const idleSidebar: SidebarSnapshot = Object.freeze({
  status: "idle",
  chats: Object.freeze([]),
  hasMore: false,
});
const noEntries: readonly OutboxEntry[] = Object.freeze([]);

function idleChat(chatId: string): ChatSnapshot {
  return Object.freeze({
    chatId,
    status: "idle",
    open: false,
    messages: Object.freeze([]),
    pending: Object.freeze([]),
    streams: Object.freeze([]),
    items: Object.freeze([]),
    hasMoreBefore: false,
    error: null,
  });
}

function notReady(client: ChatClient | null): Promise<never> {
  return Promise.reject(
    new ChatClientError(
      ClientErrorCode.SIGNED_OUT,
      client ? "The client is closed" : "No client yet: signed out, or not mounted yet",
    ),
  );
}

/**
 * The connection state: `connecting` until the client is up (and during server rendering),
 * `signedOut` while no user is signed in, then the client's state.
 */
export function useConnection(): ConnectionState {
  const { client, signedIn } = useProvided();
  const fallback: ConnectionState = signedIn ? "connecting" : "signedOut";
  const getFallback = useCallback(() => fallback, [fallback]);
  return useSyncExternalStore(
    client ? client.connection.subscribe : noSubscribe,
    client ? client.connection.getSnapshot : getFallback,
    getFallback,
  );
}

const startingStatus: ConnectionStatus = Object.freeze({
  state: "connecting",
  code: "STARTING",
  message: "Connecting",
});
const signedOutStatus: ConnectionStatus = Object.freeze({
  state: "signedOut",
  code: "NO_USER",
  message: "No user is signed in",
});

/**
 * The connection state with its reason, `{ state, code, message }` (see `ConnectionStatus`):
 * `STARTING` before the client exists (and on the server), `NO_USER` while no user is signed in.
 */
export function useConnectionStatus(): ConnectionStatus {
  const { client, signedIn } = useProvided();
  const getFallback = useCallback(() => (signedIn ? startingStatus : signedOutStatus), [signedIn]);
  return useSyncExternalStore(
    client ? client.connectionStatus.subscribe : noSubscribe,
    client ? client.connectionStatus.getSnapshot : getFallback,
    getFallback,
  );
}

/** The user's chats, live (`useChatClient()?.sidebar.loadMore()` for older ones). */
export function useSidebar(): SidebarSnapshot {
  const { client } = useProvided();
  return useSyncExternalStore(
    client ? client.sidebar.subscribe : noSubscribe,
    client ? client.sidebar.getSnapshot : () => idleSidebar,
    () => idleSidebar,
  );
}

/**
 * One chat, open and live while the component is mounted. Any number of components may use
 * the same chat: opens are counted by the client, and the chat stays live until the last of
 * them unmounts. `chatId` null shows nothing and opens nothing.
 */
export function useChat(
  chatId: string | null | undefined,
  options: { limit?: number } = {},
): ChatSnapshot | null {
  const { client } = useProvided();
  const limit = options.limit;
  useEffect(() => {
    if (!client || !chatId) return;
    client.openChat(limit === undefined ? { chatId } : { chatId, limit }).catch(() => {});
    return () => {
      // Deferred a tick: StrictMode's unmount and mount (or a component moving in the tree)
      // then keeps the chat open instead of closing and reopening it on the server.
      setTimeout(() => {
        client.closeChat({ chatId }).catch(() => {});
      }, 0);
    };
  }, [client, chatId, limit]);
  const store = client && chatId ? client.chat(chatId) : null;
  const idle = useMemo(() => (chatId ? idleChat(chatId) : null), [chatId]);
  const getIdle = useCallback(() => idle, [idle]);
  return useSyncExternalStore(
    store ? store.subscribe : noSubscribe,
    store ? store.getSnapshot : getIdle,
    getIdle,
  );
}

/**
 * Sends a message through the outbox (it shows in the chat at once as pending). Rejects with
 * `SIGNED_OUT` when there is no client.
 */
export function useSendMessage(): (input: {
  chatId: string;
  content: string;
  clientId?: string;
}) => Promise<CommandResults["message:send"]> {
  const { client } = useProvided();
  return useCallback(
    (input) => {
      if (!client) {
        const rejected = notReady(client);
        rejected.catch(() => {});
        return rejected;
      }
      return client.sendMessage(input);
    },
    [client],
  );
}

/** Stops a streamed reply in progress, on every device. */
export function useStopReply(): (
  input: CommandInput<"message:stop">,
) => Promise<CommandResults["message:stop"]> {
  const { client } = useProvided();
  return useCallback((input) => (client ? client.stopReply(input) : notReady(client)), [client]);
}

export interface OutboxView {
  /** Unconfirmed messages of every chat (pending, sending, failed), in send order. */
  entries: readonly OutboxEntry[];
  /** Sends a failed entry again (same clientId). */
  retry(clientId: string): void;
  /** Drops an entry (pending or failed). */
  discard(clientId: string): Promise<void>;
}

/** The outbox, live, with retry and discard. */
export function useOutbox(): OutboxView {
  const { client } = useProvided();
  const entries = useSyncExternalStore(
    client ? client.outbox.subscribe : noSubscribe,
    client ? client.outbox.getSnapshot : () => noEntries,
    () => noEntries,
  );
  return useMemo(
    () => ({
      entries,
      retry: (clientId: string) => client?.outbox.retry(clientId),
      discard: (clientId: string) => (client ? client.outbox.discard(clientId) : Promise.resolve()),
    }),
    [client, entries],
  );
}

// ---------------------------------------------------------------------------------------------
// Stats: one store per client, shared by every component that reads them.

interface StatsStore {
  subscribe(listener: () => void): () => void;
  getSnapshot(): UserStats | null;
}

const statsStores = new WeakMap<ChatClient, StatsStore>();

function statsStore(client: ChatClient): StatsStore {
  let store = statsStores.get(client);
  if (store) return store;
  let stats: UserStats | null = null;
  const listeners = new Set<() => void>();
  let detach: (() => void) | null = null;
  const set = (next: UserStats) => {
    stats = Object.freeze({ ...next });
    for (const l of [...listeners]) l();
  };
  const load = () => {
    if (client.state !== "online") return;
    client.stats().then(
      (r) => set(r.stats),
      () => {},
    );
  };
  store = {
    subscribe(listener) {
      listeners.add(listener);
      if (!detach) {
        const offStats = client.on("stats:updated", (e) => set(e.stats));
        // Loaded on every (re)connect: counters may have moved while offline.
        const offState = client.on("state", (state) => {
          if (state === "online") load();
        });
        detach = () => {
          offStats();
          offState();
        };
        load();
      }
      return () => {
        listeners.delete(listener);
        if (listeners.size === 0 && detach) {
          detach();
          detach = null;
        }
      };
    },
    getSnapshot: () => stats,
  };
  statsStores.set(client, store);
  return store;
}

/** The user's lifetime counters and plan, live; null until loaded. */
export function useStats(): UserStats | null {
  const { client } = useProvided();
  const store = client ? statsStore(client) : null;
  return useSyncExternalStore(
    store ? store.subscribe : noSubscribe,
    store ? store.getSnapshot : () => null,
    () => null,
  );
}

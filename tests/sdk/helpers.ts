/**
 * Helpers for the SDK tests: real clients (client-sdk) against a real server (startTestServer),
 * and event-driven waits on the SDK's stores.
 */
import {
  type ChatClient,
  type ChatClientEvents,
  type ChatClientOptions,
  type ConnectionState,
  createChatClient,
  type ReadableStore,
} from "../../client-sdk/src/index.js";
import { type TestServer, tokenFor } from "../helpers/server.js";

/** Resolves with the store's snapshot once `predicate` holds; rejects after `timeoutMs`. */
export function until<T>(
  store: ReadableStore<T>,
  predicate: (snapshot: T) => boolean,
  timeoutMs = 5000,
  what = "condition",
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let unsubscribe = () => {};
    const timer = setTimeout(() => {
      unsubscribe();
      reject(
        new Error(
          `Timed out after ${timeoutMs} ms waiting for ${what}; last snapshot: ${JSON.stringify(store.getSnapshot()).slice(0, 2000)}`,
        ),
      );
    }, timeoutMs);
    const check = () => {
      const snapshot = store.getSnapshot();
      if (!predicate(snapshot)) return false;
      clearTimeout(timer);
      unsubscribe();
      resolve(snapshot);
      return true;
    };
    if (!check()) unsubscribe = store.subscribe(check);
  });
}

export function untilState(
  client: ChatClient,
  state: ConnectionState,
  timeoutMs = 5000,
): Promise<ConnectionState> {
  return until(client.connection, (s) => s === state, timeoutMs, `state ${state}`);
}

/** Resolves with the next emission of a client event (its first argument). */
export function nextEvent<K extends keyof ChatClientEvents>(
  client: ChatClient,
  event: K,
  timeoutMs = 5000,
): Promise<Parameters<ChatClientEvents[K]>[0]> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`Timed out after ${timeoutMs} ms waiting for event ${event}`));
    }, timeoutMs);
    const listener = (payload: Parameters<ChatClientEvents[K]>[0]) => {
      clearTimeout(timer);
      off();
      resolve(payload);
    };
    const off = client.on(event, listener as ChatClientEvents[K]);
  });
}

/** Creates SDK clients for one server and closes them all at the end. */
export function clients(server: () => TestServer) {
  const created: ChatClient[] = [];
  return {
    create(userId: string, options: Partial<ChatClientOptions> = {}): ChatClient {
      const client = createChatClient({
        url: server().url,
        getToken: () => tokenFor(userId),
        ...options,
      });
      created.push(client);
      return client;
    },
    async closeAll(): Promise<void> {
      await Promise.all(created.splice(0).map((c) => c.close()));
    },
  };
}

/** Connected sockets of a user on the server (real server-side state). */
export async function serverSockets(server: TestServer, userId: string) {
  return server.app.io.in(`user:${userId}`).fetchSockets();
}

/** Stored messages of a chat, straight from Postgres: (seq, client_id, content) by seq. */
export async function storedMessages(server: TestServer, chatId: string) {
  return server.database.sql<{ seq: number; client_id: string; content: string }[]>`
    select seq::int as seq, client_id, message->>'content' as content
    from chat_memory where session_id = ${chatId} order by seq`;
}

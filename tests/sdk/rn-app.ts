/**
 * What a React Native app does with the client (tests/sdk/react-native.test.ts bundles this
 * and runs it where React Native's globals are the only ones: no window, document, indexedDB or
 * crypto). The outbox lives in an AsyncStorage-shaped store; NetInfo's changes are passed to
 * `setNetworkAvailable`.
 */
import {
  type ChatClient,
  type ConnectionState,
  createChatClient,
  keyValueOutboxStorage,
} from "@chat-backend/client";

/** `@react-native-async-storage/async-storage`'s shape: every method asynchronous. */
export class FakeAsyncStorage {
  readonly items = new Map<string, string>();
  async getItem(key: string): Promise<string | null> {
    return this.items.get(key) ?? null;
  }
  async setItem(key: string, value: string): Promise<void> {
    this.items.set(key, value);
  }
  async removeItem(key: string): Promise<void> {
    this.items.delete(key);
  }
}

function untilState(client: ChatClient, state: ConnectionState): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`never ${state}: ${client.state}`)), 10_000);
    const check = () => {
      if (client.state !== state) return;
      clearTimeout(timer);
      off();
      resolve();
    };
    const off = client.connection.subscribe(check);
    check();
  });
}

export async function run(options: { url: string; token: string; userId: string }) {
  const globals = {
    window: typeof window,
    document: typeof document,
    indexedDB: typeof indexedDB,
    crypto: typeof crypto,
    process: typeof process,
  };
  const storage = new FakeAsyncStorage();
  const client = createChatClient({
    url: options.url,
    getToken: async () => options.token,
    outboxStorage: keyValueOutboxStorage(storage, `chat-outbox-${options.userId}`),
  });
  try {
    await untilState(client, "online");
    const { chat } = await client.createChat({ title: "From React Native" });
    await client.openChat({ chatId: chat.id });
    const sent = await client.sendMessage({ chatId: chat.id, content: "hello from RN" });

    // NetInfo reports the network gone: offline at once; a message waits in AsyncStorage.
    client.setNetworkAvailable(false);
    const stateOffline = client.state;
    const queued = client.sendMessage({ chatId: chat.id, content: "sent while offline" });
    await new Promise((r) => setTimeout(r, 50));
    const storedWhileOffline = [...storage.items.values()];
    const pendingWhileOffline = client
      .chat(chat.id)
      .getSnapshot()
      .pending.map((e) => e.status);

    // NetInfo reports it back: reconnects and sends it.
    client.setNetworkAvailable(true);
    const delivered = await queued;
    await new Promise((r) => setTimeout(r, 50));
    return {
      globals,
      chatId: chat.id,
      sentClientId: sent.message.clientId,
      stateOffline,
      storedWhileOffline,
      pendingWhileOffline,
      delivered: { seq: delivered.message.seq, content: delivered.message.content },
      storedAfter: [...storage.items.values()],
      items: client
        .chat(chat.id)
        .getSnapshot()
        .items.map((i) => [i.content, i.status]),
    };
  } finally {
    await client.close();
  }
}

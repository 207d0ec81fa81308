/**
 * The SDK's delivery guarantees against a real server and Postgres: the outbox (offline sends,
 * a lost ack, a restart) stores every message exactly once, and catch-up after a reconnect
 * gives every device a gap-free, duplicate-free stream.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import {
  type ChatClient,
  type ChatMessage,
  type KeyValueStorage,
  keyValueOutboxStorage,
} from "../../client-sdk/src/index.js";
import { type ClientSocket, startTestServer, type TestServer } from "../helpers/server.js";
import { clients, serverSockets, storedMessages, until, untilState } from "./helpers.js";

let server: TestServer;
const sdk = clients(() => server);

beforeAll(async () => {
  server = await startTestServer();
});
afterEach(() => sdk.closeAll());
afterAll(() => server?.close());

async function openSharedChat(userId: string, title: string) {
  const a = sdk.create(userId);
  const b = sdk.create(userId);
  await Promise.all([untilState(a, "online"), untilState(b, "online")]);
  const { chat } = await a.createChat({ title });
  await Promise.all([a.openChat({ chatId: chat.id }), b.openChat({ chatId: chat.id })]);
  return { a, b, chatId: chat.id };
}

/** Records the client's `message:created` stream for one chat. */
function stream(client: ChatClient, chatId: string): ChatMessage[] {
  const seen: ChatMessage[] = [];
  client.on("message:created", ({ message }) => {
    if (message.chatId === chatId) seen.push(message);
  });
  return seen;
}

describe("outbox", () => {
  it("holds sends made offline and delivers them exactly once when back online", async () => {
    const { a, b, chatId } = await openSharedChat("ob_offline", "Offline");
    await a.sendMessage({ chatId, content: "before" });

    a.setNetworkAvailable(false);
    await untilState(a, "offline");
    // The connection is really gone on the server.
    await expect
      .poll(async () => (await serverSockets(server, "ob_offline")).length, { timeout: 3000 })
      .toBe(1);

    const sends = ["one", "two", "three"].map((content) => a.sendMessage({ chatId, content }));
    const pending = await until(a.chat(chatId), (s) => s.pending.length === 3);
    expect(pending.items.map((i) => [i.content, i.status])).toEqual([
      ["before", "sent"],
      ["one", "pending"],
      ["two", "pending"],
      ["three", "pending"],
    ]);
    expect(a.outbox.getSnapshot().map((e) => e.content)).toEqual(["one", "two", "three"]);
    expect((await storedMessages(server, chatId)).map((m) => m.content)).toEqual(["before"]);

    a.setNetworkAvailable(true);
    const confirmed = await Promise.all(sends);
    expect(confirmed.map((r) => [r.message.seq, r.message.content])).toEqual([
      [2, "one"],
      [3, "two"],
      [4, "three"],
    ]);

    const stored = await storedMessages(server, chatId);
    expect(stored.map((m) => [m.seq, m.content])).toEqual([
      [1, "before"],
      [2, "one"],
      [3, "two"],
      [4, "three"],
    ]);
    expect(new Set(stored.map((m) => m.client_id)).size).toBe(4);
    for (const device of [a, b]) {
      const s = await until(
        device.chat(chatId),
        (x) => x.messages.length === 4 && !x.pending.length,
      );
      expect(s.messages.map((m) => m.clientId)).toEqual(stored.map((m) => m.client_id));
    }
    expect(a.outbox.getSnapshot()).toEqual([]);
  });

  it("resends with the same clientId when the ack is lost, and the server stores it once", async () => {
    const { a, chatId } = await openSharedChat("ob_lost_ack", "Lost ack");
    // Real failure: the server drops A's connection the moment the send arrives, so the
    // message is stored but the ack never reaches A.
    let dropped = 0;
    const sockets = [...server.app.io.sockets.sockets.values()].filter(
      (s) => s.data.userId === "ob_lost_ack",
    );
    expect(sockets).toHaveLength(2);
    for (const s of sockets) {
      // onAny runs as the packet arrives; the server still handles (stores) the send after it.
      s.onAny((event: string) => {
        if (event === "message:send" && dropped++ === 0) s.disconnect(true);
      });
    }

    const states: string[] = [];
    a.on("state", (s) => states.push(s));
    const result = await a.sendMessage({ chatId, content: "exactly once" });
    expect(states).toContain("offline");
    expect(dropped).toBeGreaterThanOrEqual(1);
    expect(result.duplicate).toBe(true);

    const stored = await storedMessages(server, chatId);
    expect(stored).toEqual([
      { seq: 1, client_id: result.message.clientId, content: "exactly once" },
    ]);
    const s = await until(a.chat(chatId), (x) => x.messages.length === 1 && !x.pending.length);
    expect(s.messages[0]?.id).toBe(result.message.id);
  });

  it("survives a restart: a new client sends what the old one left in storage", async () => {
    const values = new Map<string, string>();
    // AsyncStorage-shaped (async) key-value storage.
    const kv: KeyValueStorage = {
      getItem: async (k) => values.get(k) ?? null,
      setItem: async (k, v) => {
        values.set(k, v);
      },
      removeItem: async (k) => {
        values.delete(k);
      },
    };
    const first = sdk.create("ob_restart", { outboxStorage: keyValueOutboxStorage(kv, "ob") });
    await untilState(first, "online");
    const { chat } = await first.createChat({ title: "Restart" });
    first.setNetworkAvailable(false);
    const lost = first.sendMessage({ chatId: chat.id, content: "written offline" });
    await until(first.outbox, (o) => o.length === 1);
    await first.close();
    await expect(lost).rejects.toMatchObject({ code: "CLOSED" });
    expect(JSON.parse(values.get("ob") ?? "[]")).toMatchObject([
      { chatId: chat.id, content: "written offline", status: "pending" },
    ]);
    expect(await storedMessages(server, chat.id)).toEqual([]);

    const second = sdk.create("ob_restart", { outboxStorage: keyValueOutboxStorage(kv, "ob") });
    await second.ready;
    expect(second.outbox.getSnapshot().map((e) => e.content)).toEqual(["written offline"]);
    await until(second.outbox, (o) => o.length === 0);
    expect((await storedMessages(server, chat.id)).map((m) => m.content)).toEqual([
      "written offline",
    ]);
    await expect.poll(() => values.has("ob"), { timeout: 2000 }).toBe(false);
  });
});

describe("catch-up after a reconnect", () => {
  it("is gap-free and duplicate-free across several sync pages", async () => {
    const a = sdk.create("ob_sync", { syncPageSize: 10 });
    await untilState(a, "online");
    const { chat } = await a.createChat({ title: "Catch-up" });
    await a.openChat({ chatId: chat.id });
    const seen = stream(a, chat.id);
    const other = await server.connectAs("ob_sync");

    const send = (s: ClientSocket, content: string) =>
      s.emitWithAck("message:send", { chatId: chat.id, clientId: content, content });
    await send(other, "m-01");
    await until(a.chat(chat.id), (s) => s.messages.length === 1);

    a.setNetworkAvailable(false);
    await untilState(a, "offline");
    // 35 messages while A is away: 4 pages of 10.
    for (let i = 2; i <= 36; i += 5) {
      await Promise.all(
        [0, 1, 2, 3, 4].map((k) => send(other, `m-${String(i + k).padStart(2, "0")}`)),
      );
    }
    a.setNetworkAvailable(true);
    const s = await until(a.chat(chat.id), (x) => x.messages.length === 36, 8000, "36 messages");
    expect(s.messages.map((m) => m.seq)).toEqual(Array.from({ length: 36 }, (_, i) => i + 1));
    expect(seen.map((m) => m.seq)).toEqual(s.messages.map((m) => m.seq));
    const stored = await storedMessages(server, chat.id);
    expect(s.messages.map((m) => m.content)).toEqual(stored.map((m) => m.content));
    await until(a.sidebar, (x) => x.chats[0]?.lastSeq === 36);
  });

  it("stays gap-free and exactly-once when the server drops both devices mid-burst", async () => {
    const { a, b, chatId } = await openSharedChat("ob_kick", "Kick");
    const seenA = stream(a, chatId);
    const seenB = stream(b, chatId);
    const reconnected = (c: ChatClient) =>
      new Promise<void>((resolve) => {
        c.on("state", (state, previous) => {
          if (state === "online" && previous !== "connecting") resolve();
        });
      });
    const back = Promise.all([reconnected(a), reconnected(b)]);
    const sends: Promise<unknown>[] = [];
    for (let i = 0; i < 20; i++) {
      sends.push(b.sendMessage({ chatId, content: `b-${i}` }));
      // Server-side disconnect of every socket of the user, midway through the burst.
      if (i === 5) server.app.io.in("user:ob_kick").disconnectSockets();
    }
    await Promise.all(sends);
    await back;
    const [sa, sb] = await Promise.all([
      until(a.chat(chatId), (x) => x.messages.length === 20, 8000, "20 on A"),
      until(b.chat(chatId), (x) => x.messages.length === 20, 8000, "20 on B"),
    ]);
    const seqs = Array.from({ length: 20 }, (_, i) => i + 1);
    expect(sa.messages.map((m) => m.seq)).toEqual(seqs);
    expect(sa.messages.map((m) => m.id)).toEqual(sb.messages.map((m) => m.id));
    expect(seenA.map((m) => m.seq)).toEqual(seqs);
    expect(seenB.map((m) => m.seq)).toEqual(seqs);
    expect(sb.messages.map((m) => m.content)).toEqual(seqs.map((n) => `b-${n - 1}`));
    expect((await storedMessages(server, chatId)).map((m) => m.content)).toEqual(
      seqs.map((n) => `b-${n - 1}`),
    );
  });
});

/**
 * The SDK against a real server and Postgres: commands and their typed errors, two devices of
 * one user converging, in-band token refresh, and the signed-out state.
 */
import { randomUUID } from "node:crypto";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { ChatClientError, type ChatSnapshot, ClientErrorCode } from "../../client-sdk/src/index.js";
import { startTestServer, type TestServer, tokenFor } from "../helpers/server.js";
import { clients, nextEvent, serverSockets, until, untilState } from "./helpers.js";

let server: TestServer;
const sdk = clients(() => server);

beforeAll(async () => {
  server = await startTestServer();
});
afterEach(() => sdk.closeAll());
afterAll(() => server?.close());

async function rejection(promise: Promise<unknown>): Promise<ChatClientError> {
  const err = await promise.then(
    () => {
      throw new Error("expected a rejection");
    },
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ChatClientError);
  return err as ChatClientError;
}

/** (seq, clientId, content) of a chat snapshot, for comparing devices. */
const rows = (s: ChatSnapshot) => s.messages.map((m) => [m.seq, m.clientId, m.content]);

describe("commands", () => {
  it("resolve with the server's data", async () => {
    const c = sdk.create("sdk_cmd");
    await untilState(c, "online");

    const { chat } = await c.createChat({ title: "  First  " });
    expect(chat).toMatchObject({ title: "First", lastSeq: 0, lastMessage: null });
    expect((await c.listChats()).chats.map((x) => x.id)).toEqual([chat.id]);
    expect((await c.renameChat({ chatId: chat.id, title: "Renamed" })).chat.title).toBe("Renamed");

    const opened = await c.openChat({ chatId: chat.id });
    expect(opened).toMatchObject({ messages: [], hasMore: false, chat: { id: chat.id } });

    const sent = await c.sendMessage({ chatId: chat.id, content: "hello" });
    expect(sent.duplicate).toBe(false);
    expect(sent.message).toMatchObject({ chatId: chat.id, seq: 1, role: "user", content: "hello" });

    expect((await c.history({ chatId: chat.id })).messages.map((m) => m.id)).toEqual([
      sent.message.id,
    ]);
    const synced = await c.sync({ chatId: chat.id, afterSeq: 0 });
    expect(synced).toMatchObject({ lastSeq: 1, hasMore: false });
    const { stats } = await c.stats();
    expect(stats).toMatchObject({ totalConversations: 1, messageCount: 1 });

    // The stores followed the acks and events.
    const snapshot = await until(c.chat(chat.id), (s) => s.messages.length === 1);
    expect(snapshot.items.map((i) => [i.seq, i.content, i.status])).toEqual([[1, "hello", "sent"]]);
    expect(snapshot.pending).toEqual([]);
    const sidebar = await until(c.sidebar, (s) => s.chats[0]?.lastSeq === 1);
    expect(sidebar.chats).toHaveLength(1);
    expect(sidebar.chats[0]).toMatchObject({
      title: "Renamed",
      lastMessage: { role: "user", content: "hello" },
    });
    expect(c.outbox.getSnapshot()).toEqual([]);
  });

  it("reject with typed ChatClientErrors", async () => {
    const c = sdk.create("sdk_err");
    await untilState(c, "online");
    const { chat } = await c.createChat({});

    const missing = await rejection(c.renameChat({ chatId: randomUUID(), title: "x" }));
    expect(missing).toMatchObject({ code: "NOT_FOUND", retryable: false, command: "chat:rename" });

    const blank = await rejection(c.renameChat({ chatId: chat.id, title: "   " }));
    expect(blank.code).toBe("INVALID_PAYLOAD");
    expect(blank.retryable).toBe(false);
    expect(blank.details?.map((d) => d.path)).toEqual(["title"]);

    const both = await rejection(c.history({ chatId: chat.id, before: 5, after: 1 }));
    expect(both.code).toBe("INVALID_PAYLOAD");

    // Checked before it reaches the outbox.
    const empty = await rejection(c.sendMessage({ chatId: chat.id, content: "  " }));
    expect(empty).toMatchObject({ code: "INVALID_PAYLOAD", details: [{ path: "content" }] });
    expect(c.outbox.getSnapshot()).toEqual([]);

    // Refused by the server for good: the outbox entry is marked failed with the reason.
    const ghost = randomUUID();
    const refused = await rejection(c.sendMessage({ chatId: ghost, content: "into the void" }));
    expect(refused.code).toBe("NOT_FOUND");
    const [failed] = c.outbox.getSnapshot();
    expect(failed).toMatchObject({ chatId: ghost, status: "failed", error: { code: "NOT_FOUND" } });
    await c.outbox.discard(failed?.clientId ?? "");
    expect(c.outbox.getSnapshot()).toEqual([]);

    await c.deleteChat({ chatId: chat.id });
    const gone = await rejection(c.openChat({ chatId: chat.id }));
    expect(gone.code).toBe("NOT_FOUND");
    expect(c.chat(chat.id).getSnapshot().status).toBe("deleted");
    expect(c.sidebar.getSnapshot().chats).toEqual([]);
  });
});

describe("stores", () => {
  it("page the sidebar and a chat's history", async () => {
    const c = sdk.create("sdk_pages");
    await untilState(c, "online");
    const ids: string[] = [];
    for (let i = 0; i < 53; i += 9) {
      const batch = Array.from({ length: Math.min(9, 53 - i) }, (_, k) =>
        c.createChat({ title: `chat ${i + k}` }),
      );
      ids.push(...(await Promise.all(batch)).map((r) => r.chat.id));
    }
    // The sidebar loaded on connect (before these) and followed the chat:created events.
    await until(c.sidebar, (s) => s.chats.length === 53);
    await c.sidebar.refresh();
    const first = c.sidebar.getSnapshot();
    expect(first.chats).toHaveLength(53);
    const server = await c.listChats({ limit: 53 });
    expect(first.chats.map((x) => x.id)).toEqual(server.chats.map((x) => x.id));

    // A fresh device loads one page (50), then the rest.
    const d = sdk.create("sdk_pages");
    const page = await until(d.sidebar, (s) => s.status === "ready");
    expect(page.chats).toHaveLength(50);
    expect(page.hasMore).toBe(true);
    await d.sidebar.loadMore();
    const all = d.sidebar.getSnapshot();
    expect(all.hasMore).toBe(false);
    expect(all.chats.map((x) => x.id)).toEqual(server.chats.map((x) => x.id));

    const chatId = ids[0] ?? "";
    for (let i = 1; i <= 5; i++) await c.sendMessage({ chatId, content: `m${i}` });
    await d.openChat({ chatId, limit: 2 });
    const latest = d.chat(chatId).getSnapshot();
    expect(latest.messages.map((m) => m.seq)).toEqual([4, 5]);
    expect(latest.hasMoreBefore).toBe(true);
    await d.chat(chatId).loadOlder(2);
    expect(
      d
        .chat(chatId)
        .getSnapshot()
        .messages.map((m) => m.seq),
    ).toEqual([2, 3, 4, 5]);
    await d.chat(chatId).loadOlder();
    const whole = d.chat(chatId).getSnapshot();
    expect(whole.messages.map((m) => m.content)).toEqual(["m1", "m2", "m3", "m4", "m5"]);
    expect(whole.hasMoreBefore).toBe(false);
  });

  it("keep snapshot identity until their content changes (useSyncExternalStore)", async () => {
    const c = sdk.create("sdk_identity");
    await untilState(c, "online");
    const [one, two] = await Promise.all([c.createChat({}), c.createChat({})]);
    const chatOne = one.chat.id;
    const chatTwo = two.chat.id;
    await Promise.all([c.openChat({ chatId: chatOne }), c.openChat({ chatId: chatTwo })]);
    await c.sendMessage({ chatId: chatOne, content: "first" });
    const store = c.chat(chatOne);
    const before = await until(store, (s) => s.messages.length === 1);
    let notified = 0;
    const off = store.subscribe(() => notified++);

    // Activity elsewhere, and a re-delivered copy of a known message, change nothing here.
    await c.sendMessage({ chatId: chatTwo, content: "elsewhere" });
    await until(c.chat(chatTwo), (s) => s.messages.length === 1);
    await c.sync({ chatId: chatOne, afterSeq: 0 });
    await c.sidebar.refresh();
    expect(store.getSnapshot()).toBe(before);
    expect(store.getSnapshot().messages).toBe(before.messages);
    expect(notified).toBe(0);
    expect(Object.isFrozen(before) && Object.isFrozen(before.messages)).toBe(true);

    const sidebarBefore = c.sidebar.getSnapshot();
    await c.sidebar.refresh();
    expect(c.sidebar.getSnapshot()).toBe(sidebarBefore);

    await c.sendMessage({ chatId: chatOne, content: "second" });
    const after = await until(store, (s) => s.messages.length === 2);
    expect(after).not.toBe(before);
    expect(after.messages[0]).toBe(before.messages[0]);
    expect(notified).toBeGreaterThan(0);
    off();
  });
});

describe("two devices of one user", () => {
  it("see the sidebar and the chat converge", async () => {
    const a = sdk.create("sdk_twin");
    const b = sdk.create("sdk_twin");
    await Promise.all([untilState(a, "online"), untilState(b, "online")]);

    const { chat } = await a.createChat({ title: "Shared" });
    await until(b.sidebar, (s) => s.chats.some((c) => c.id === chat.id), 5000, "chat on B");
    await Promise.all([a.openChat({ chatId: chat.id }), b.openChat({ chatId: chat.id })]);

    // Interleaved sends from both devices, not awaited one by one.
    const sends = [
      a.sendMessage({ chatId: chat.id, content: "a1" }),
      b.sendMessage({ chatId: chat.id, content: "b1" }),
      a.sendMessage({ chatId: chat.id, content: "a2" }),
      b.sendMessage({ chatId: chat.id, content: "b2" }),
      a.sendMessage({ chatId: chat.id, content: "a3" }),
    ];
    await Promise.all(sends);
    const [sa, sb] = await Promise.all([
      until(a.chat(chat.id), (s) => s.messages.length === 5, 5000, "5 messages on A"),
      until(b.chat(chat.id), (s) => s.messages.length === 5, 5000, "5 messages on B"),
    ]);
    expect(sa.messages.map((m) => m.seq)).toEqual([1, 2, 3, 4, 5]);
    expect(rows(sa)).toEqual(rows(sb));
    expect(sa.pending).toEqual([]);
    // Each device's own messages keep their send order.
    const own = (s: ChatSnapshot, p: string) =>
      s.messages.map((m) => m.content).filter((x) => x.startsWith(p));
    expect(own(sa, "a")).toEqual(["a1", "a2", "a3"]);
    expect(own(sa, "b")).toEqual(["b1", "b2"]);

    // A second chat goes on top; a message in the first brings it back up, on both devices.
    const second = (await b.createChat({ title: "Second" })).chat;
    await until(a.sidebar, (s) => s.chats[0]?.id === second.id, 5000, "second on top on A");
    const last = await a.sendMessage({ chatId: chat.id, content: "back on top" });
    for (const device of [a, b]) {
      const s = await until(
        device.sidebar,
        (x) => x.chats[0]?.id === chat.id && x.chats[0].lastSeq === 6,
        5000,
        "first chat back on top",
      );
      expect(s.chats.map((c) => c.id)).toEqual([chat.id, second.id]);
      expect(s.chats[0]?.lastMessage).toEqual({ role: "user", content: "back on top" });
      // updatedAt carries microseconds; the message's createdAt the same instant in milliseconds.
      expect(s.chats[0]?.updatedAt.slice(0, 23)).toBe(last.message.createdAt.slice(0, 23));
    }

    await b.renameChat({ chatId: chat.id, title: "Renamed on B" });
    await until(a.sidebar, (s) => s.chats.find((c) => c.id === chat.id)?.title === "Renamed on B");

    await a.deleteChat({ chatId: chat.id });
    const sbAfter = await until(b.sidebar, (s) => !s.chats.some((c) => c.id === chat.id));
    expect(sbAfter.chats.map((c) => c.id)).toEqual([second.id]);
    expect((await until(b.chat(chat.id), (s) => s.status === "deleted")).open).toBe(false);
    expect(a.sidebar.getSnapshot().chats).toEqual(b.sidebar.getSnapshot().chats);
  });
});

describe("authentication", () => {
  // Grace 0: the server disconnects a socket the moment its token expires unrefreshed.
  let strict: TestServer;
  beforeAll(async () => {
    strict = await startTestServer({ databaseUrl: server.databaseUrl, tokenGraceSeconds: 0 });
  });
  afterAll(() => strict?.close());

  it("refreshes a short-lived token in-band and stays connected past its expiry", async () => {
    const tokens: string[] = [];
    const c = sdk.create("sdk_refresh", {
      url: strict.url,
      getToken: async () => {
        const token = await tokenFor("sdk_refresh", { ttlSeconds: 3 });
        tokens.push(token);
        return token;
      },
    });
    const states: string[] = [];
    c.on("state", (s) => states.push(s));
    await untilState(c, "online");
    const [socket] = await serverSockets(strict, "sdk_refresh");
    const firstExpiry = socket?.data.tokenExpiresAt ?? 0;
    expect(firstExpiry).toBeGreaterThan(Date.now());

    // Refreshed at ~70% of the lifetime, then again at ~70% of the new one: the second
    // refresh comes after the first token's expiry, when an unrefreshed socket is gone.
    await nextEvent(c, "auth:refreshed", 4000);
    const second = await nextEvent(c, "auth:refreshed", 4000);
    expect(Date.now()).toBeGreaterThan(firstExpiry);
    expect(Date.parse(second.expiresAt)).toBeGreaterThan(firstExpiry);

    // Same socket all along, never disconnected, and commands still work.
    const after = await serverSockets(strict, "sdk_refresh");
    expect(after.map((s) => s.id)).toEqual([socket?.id]);
    expect(after[0]?.data.tokenExpiresAt).toBe(Date.parse(second.expiresAt));
    expect(states).toEqual(["online"]);
    expect(tokens.length).toBeGreaterThanOrEqual(3);
    expect((await c.stats()).stats.totalConversations).toBe(0);
  });

  it("reconnects with a fresh token when the server drops an expired one", async () => {
    // getToken fails after the handshake, so the in-band refresh cannot happen in time.
    let failing = false;
    const c = sdk.create("sdk_expired", {
      url: strict.url,
      getToken: async () => {
        if (failing) throw new Error("token service unreachable");
        return tokenFor("sdk_expired", { ttlSeconds: 2 });
      },
    });
    await untilState(c, "online");
    const [first] = await serverSockets(strict, "sdk_expired");
    failing = true;
    const closing = nextEvent(c, "connection:closing", 5000);
    await untilState(c, "reauthenticating", 5000);
    expect(await closing).toMatchObject({ reason: "TOKEN_EXPIRED", reconnect: true });
    failing = false;
    await untilState(c, "online", 5000);
    const now = await serverSockets(strict, "sdk_expired");
    expect(now).toHaveLength(1);
    expect(now[0]?.id).not.toBe(first?.id);
    expect(now[0]?.data.tokenExpiresAt).toBeGreaterThan(first?.data.tokenExpiresAt ?? 0);
    expect((await c.listChats()).chats).toEqual([]);
  });

  it("is signedOut when getToken returns null, and connects after sign-in", async () => {
    let token: string | null = null;
    const c = sdk.create("sdk_out", { getToken: async () => token });
    await untilState(c, "signedOut");
    expect(await serverSockets(server, "sdk_out")).toHaveLength(0);
    expect((await rejection(c.listChats())).code).toBe(ClientErrorCode.SIGNED_OUT);
    expect((await rejection(c.sendMessage({ chatId: randomUUID(), content: "x" }))).code).toBe(
      ClientErrorCode.SIGNED_OUT,
    );

    token = await tokenFor("sdk_out");
    c.reconnect();
    await untilState(c, "online");
    expect((await c.listChats()).chats).toEqual([]);
    expect(await serverSockets(server, "sdk_out")).toHaveLength(1);
  });

  it("is signedOut when the server refuses the token for good", async () => {
    const c = sdk.create("sdk_party", {
      getToken: () => tokenFor("sdk_party", { authorizedParty: "https://elsewhere.example" }),
    });
    const error = nextEvent(c, "error");
    await untilState(c, "signedOut");
    expect((await error).error.code).toBe(ClientErrorCode.SIGNED_OUT);
    expect((await error).error.message).toContain("TOKEN_WRONG_PARTY");
  });

  it("is signedOut, and stops retrying, when the server refuses its origin", async () => {
    let tokens = 0;
    const c = sdk.create("sdk_origin", {
      getToken: () => {
        tokens++;
        return tokenFor("sdk_origin");
      },
      socketOptions: { extraHeaders: { Origin: "https://foreign.example" } },
    });
    const states: string[] = [];
    c.on("state", (s) => states.push(s));
    const error = nextEvent(c, "error");
    await untilState(c, "signedOut");
    expect((await error).error.code).toBe(ClientErrorCode.SIGNED_OUT);
    expect((await error).error.message).toContain("ORIGIN_NOT_ALLOWED");
    // Refused once, then no reconnect schedule: never offline, one token fetched.
    expect(states).not.toContain("offline");
    expect(tokens).toBe(1);
    expect((await rejection(c.listChats())).code).toBe(ClientErrorCode.SIGNED_OUT);
    expect(await serverSockets(server, "sdk_origin")).toHaveLength(0);
  });

  it("signs out mid-session when a refresh finds the user signed out", async () => {
    let signedIn = true;
    const c = sdk.create("sdk_midout", {
      getToken: async () => (signedIn ? tokenFor("sdk_midout", { ttlSeconds: 2 }) : null),
    });
    await untilState(c, "online");
    expect(await serverSockets(server, "sdk_midout")).toHaveLength(1);
    signedIn = false;
    await untilState(c, "signedOut", 4000);
    // The socket was closed, not left to expire.
    await expect
      .poll(async () => (await serverSockets(server, "sdk_midout")).length, { timeout: 3000 })
      .toBe(0);
  });
});

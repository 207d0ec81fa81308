/**
 * The connection's state machine and its one reconnect loop, against a real server behind a
 * real TCP front door that can make the server unreachable: while "down" it refuses every
 * WebSocket upgrade (and cuts the open ones); while "up" it pipes them to the server. Every
 * upgrade it sees is one connection attempt of the client.
 */
import { createServer, type IncomingMessage } from "node:http";
import { type AddressInfo, type Socket as NetSocket, connect as tcpConnect } from "node:net";
import type { Duplex } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import {
  type ChatClient,
  type ConnectionStatus,
  createChatClient,
} from "../../client-sdk/src/index.js";
import { startTestServer, type TestServer, tokenFor } from "../helpers/server.js";
import { serverSockets, storedMessages, until, untilState } from "./helpers.js";

let server: TestServer;
const doors: FrontDoor[] = [];
const created: ChatClient[] = [];

beforeAll(async () => {
  server = await startTestServer();
});
afterEach(async () => {
  await Promise.all(created.splice(0).map((c) => c.close()));
  await Promise.all(doors.splice(0).map((d) => d.close()));
});
afterAll(() => server?.close());

interface FrontDoor {
  url: string;
  /** When each WebSocket upgrade (connection attempt) arrived, performance.now() ms. */
  attempts: number[];
  up(): void;
  /** Refuses new upgrades and cuts the open connections: the server is unreachable. */
  down(): void;
  close(): Promise<void>;
}

async function frontDoor(targetPort: number): Promise<FrontDoor> {
  const attempts: number[] = [];
  let isDown = false;
  const open = new Set<Duplex | NetSocket>();
  const http = createServer((_req, res) => {
    res.statusCode = 503;
    res.end();
  });
  http.on("upgrade", (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    attempts.push(performance.now());
    if (isDown) {
      socket.destroy();
      return;
    }
    const upstream = tcpConnect(targetPort, "127.0.0.1", () => {
      let raw = `${req.method} ${req.url} HTTP/${req.httpVersion}\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2) {
        raw += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      }
      upstream.write(`${raw}\r\n`);
      if (head.length) upstream.write(head);
      socket.pipe(upstream).pipe(socket);
    });
    const drop = () => {
      open.delete(socket);
      open.delete(upstream);
      socket.destroy();
      upstream.destroy();
    };
    open.add(socket);
    open.add(upstream);
    socket.on("error", drop);
    socket.on("close", drop);
    upstream.on("error", drop);
    upstream.on("close", drop);
  });
  await new Promise<void>((resolve) => http.listen(0, "127.0.0.1", resolve));
  const { port } = http.address() as AddressInfo;
  const door: FrontDoor = {
    url: `http://127.0.0.1:${port}`,
    attempts,
    up() {
      isDown = false;
    },
    down() {
      isDown = true;
      for (const s of [...open]) s.destroy();
    },
    close: () =>
      new Promise<void>((resolve) => {
        door.down();
        http.close(() => resolve());
      }),
  };
  doors.push(door);
  return door;
}

function client(url: string, getToken: () => Promise<string | null>): ChatClient {
  const c = createChatClient({ url, getToken, detectNetwork: false });
  created.push(c);
  return c;
}

/** Every status the store published, the first one included. */
function statuses(c: ChatClient): ConnectionStatus[] {
  const seen = [c.connectionStatus.getSnapshot()];
  c.connectionStatus.subscribe(() => seen.push(c.connectionStatus.getSnapshot()));
  return seen;
}

describe("the reconnect loop", () => {
  it("is one loop: while the server is unreachable, attempts follow one backoff schedule, each with a fresh token", async () => {
    const door = await frontDoor(server.port);
    door.down();
    const user = "conn_one_loop";
    let tokens = 0;
    const c = client(door.url, () => {
      tokens++;
      return tokenFor(user);
    });
    const seen = statuses(c);
    await until(c.connectionStatus, (s) => s.code === "TRANSPORT_ERROR", 5000, "a failed attempt");
    await sleep(4000);

    const times = [...door.attempts];
    // One loop with the default bounds (500 ms doubling to 5 s, full jitter): the k-th wait is
    // at least half of min(5000, 500·2^(k-1)) ms, so 4 s hold at most 5 attempts. A second loop
    // (socket.io-client's own reconnection) would add attempts in between.
    expect(times.length).toBeGreaterThanOrEqual(3);
    expect(times.length).toBeLessThanOrEqual(5);
    for (let k = 1; k < times.length; k++) {
      const minWait = Math.min(5000, 500 * 2 ** (k - 1)) / 2;
      expect((times[k] ?? 0) - (times[k - 1] ?? 0)).toBeGreaterThanOrEqual(minWait - 20);
    }
    // A fresh getToken() for every attempt, and no attempt without one.
    expect(tokens - times.length).toBeGreaterThanOrEqual(0);
    expect(tokens - times.length).toBeLessThanOrEqual(1);
    expect(seen[0]).toEqual({ state: "connecting", code: "STARTING", message: "Connecting" });
    for (const s of seen.slice(1)) {
      expect(s.state).toBe("offline");
      expect(s.code).toBe("TRANSPORT_ERROR");
      expect(s.message.length).toBeGreaterThan(0);
    }

    door.up();
    await untilState(c, "online", 10_000);
    expect(c.connectionStatus.getSnapshot()).toEqual({
      state: "online",
      code: "CONNECTED",
      message: "Connected",
    });
    // Online: nothing else tries to connect (no leftover loop opens a second socket).
    const connectedAfter = door.attempts.length;
    await sleep(1500);
    expect(door.attempts.length).toBe(connectedAfter);
    expect(await serverSockets(server, user)).toHaveLength(1);
  });

  it("reconnect() makes one attempt at once and restarts the same loop's backoff", async () => {
    const door = await frontDoor(server.port);
    door.down();
    const c = client(door.url, () => tokenFor("conn_reconnect_now"));
    await until(c.connectionStatus, (s) => s.code === "TRANSPORT_ERROR", 5000, "a failed attempt");
    // Let the backoff grow past a second, then ask for an attempt now.
    await expect.poll(() => door.attempts.length, { timeout: 5000 }).toBeGreaterThanOrEqual(3);
    await sleep(200);
    const before = door.attempts.length;
    const asked = performance.now();
    const seen: [string, string][] = [];
    c.on("state", (state, _previous, status) => seen.push([state, status.code]));
    c.reconnect();
    await expect.poll(() => door.attempts.length, { timeout: 2000 }).toBeGreaterThan(before);
    // The scheduled attempt was due 0.8 s or more from now (the 3rd wait is at least 1 s):
    // this one is reconnect()'s.
    expect((door.attempts[before] ?? 0) - asked).toBeLessThan(700);
    await expect.poll(() => seen.length, { timeout: 2000 }).toBe(2);
    expect(seen).toEqual([
      ["connecting", "RECONNECT_REQUESTED"],
      ["offline", "TRANSPORT_ERROR"],
    ]);
    // The same loop goes on from the start of its schedule: the next wait is the first one
    // (250–500 ms), not the 1–2 s it had reached; and no other attempt comes in between.
    await expect.poll(() => door.attempts.length, { timeout: 3000 }).toBeGreaterThan(before + 1);
    const after = door.attempts.slice(before);
    expect((after[1] ?? 0) - (after[0] ?? 0)).toBeGreaterThanOrEqual(230);
    expect((after[1] ?? 0) - (after[0] ?? 0)).toBeLessThan(1500);
  });
});

describe("the state machine", () => {
  it("every state change carries its code and message", async () => {
    const door = await frontDoor(server.port);
    const user = "conn_reasons";
    let token: "ok" | "throw" | "null" = "ok";
    const c = client(door.url, async () => {
      if (token === "throw") {
        token = "ok";
        throw new Error("token service down");
      }
      return token === "null" ? null : tokenFor(user);
    });
    const seen = statuses(c);
    const changes: [string, string, string, string][] = [];
    c.on("state", (state, previous, status) => {
      expect(status.state).toBe(state);
      changes.push([previous, state, status.code, status.message]);
    });
    const dropFromServer = async () => {
      const sockets = await serverSockets(server, user);
      expect(sockets).toHaveLength(1);
      sockets[0]?.disconnect(true);
    };
    await untilState(c, "online");

    door.down(); // the server becomes unreachable, then reachable again
    await untilState(c, "offline");
    door.up();
    await untilState(c, "online", 10_000);

    await dropFromServer(); // the server closes the connection
    await untilState(c, "offline");
    await untilState(c, "online");

    c.setNetworkAvailable(false);
    c.setNetworkAvailable(true);
    await untilState(c, "online");

    token = "throw"; // the next attempt's getToken() fails once
    await dropFromServer();
    await until(c.connectionStatus, (s) => s.code === "TOKEN_UNAVAILABLE", 5000, "no token");
    await untilState(c, "online", 5000);

    c.reconnect(); // online already: nothing changes
    token = "null"; // signed out elsewhere: the next attempt finds no token
    await dropFromServer();
    await untilState(c, "signedOut");
    token = "ok";
    c.reconnect();
    await untilState(c, "online");
    await c.close();

    expect(changes.map(([p, s, code]) => [p, s, code])).toEqual([
      ["connecting", "online", "CONNECTED"],
      ["online", "offline", "TRANSPORT_ERROR"],
      ["offline", "online", "CONNECTED"],
      ["online", "offline", "TRANSPORT_ERROR"],
      ["offline", "online", "CONNECTED"],
      ["online", "offline", "NETWORK_UNAVAILABLE"],
      ["offline", "online", "CONNECTED"],
      ["online", "offline", "TRANSPORT_ERROR"],
      ["offline", "online", "CONNECTED"],
      ["online", "offline", "TRANSPORT_ERROR"],
      ["offline", "signedOut", "NO_TOKEN"],
      ["signedOut", "connecting", "RECONNECT_REQUESTED"],
      ["connecting", "online", "CONNECTED"],
      ["online", "offline", "CLOSED"],
    ]);
    const messages = new Map(changes.map(([, , code, message]) => [code, message]));
    expect(messages.get("CONNECTED")).toBe("Connected");
    expect(messages.get("NETWORK_UNAVAILABLE")).toBe("The device has no network");
    expect(messages.get("NO_TOKEN")).toBe("getToken() returned null");
    expect(messages.get("RECONNECT_REQUESTED")).toBe("Reconnecting (reconnect() was called)");
    expect(messages.get("CLOSED")).toBe("The client was closed");
    expect(changes.map(([, , , m]) => m)).toContain("The server closed the connection");
    // The store also changed for the reason alone (offline: TRANSPORT_ERROR → TOKEN_UNAVAILABLE).
    expect(seen).toContainEqual({
      state: "offline",
      code: "TOKEN_UNAVAILABLE",
      message: "getToken() failed: token service down",
    });
    for (const s of seen) {
      expect(s.code).toMatch(/^[A-Z_]+$/);
      expect(s.message.length).toBeGreaterThan(0);
    }
  });
});

describe("the outbox and the loop", () => {
  it("holds messages while the server is unreachable; stores each once, in send order, when it is back", async () => {
    const door = await frontDoor(server.port);
    const c = client(door.url, () => tokenFor("conn_outbox"));
    await untilState(c, "online");
    const { chat } = await c.createChat({ title: "Unreachable" });
    await c.openChat({ chatId: chat.id });

    door.down();
    await untilState(c, "offline");
    const first = c.sendMessage({ chatId: chat.id, content: "first while unreachable" });
    const dropped = c.sendMessage({ chatId: chat.id, content: "discarded while unreachable" });
    const third = c.sendMessage({ chatId: chat.id, content: "third while unreachable" });
    const waiting = await until(c.outbox, (o) => o.length === 3);
    expect(waiting.map((e) => [e.content, e.status])).toEqual([
      ["first while unreachable", "pending"],
      ["discarded while unreachable", "pending"],
      ["third while unreachable", "pending"],
    ]);
    await c.outbox.discard(waiting[1]?.clientId ?? "");
    await expect(dropped).rejects.toMatchObject({ code: "CANCELLED" });
    // Not sent while the attempts fail (nothing is buffered into a dead socket).
    await sleep(1500);
    expect(c.outbox.getSnapshot().map((e) => e.status)).toEqual(["pending", "pending"]);
    expect(await storedMessages(server, chat.id)).toEqual([]);

    door.up();
    const [a, b] = await Promise.all([first, third]);
    expect(a.duplicate).toBe(false);
    expect(b.duplicate).toBe(false);
    expect(await storedMessages(server, chat.id)).toEqual([
      { seq: 1, client_id: a.message.clientId, content: "first while unreachable" },
      { seq: 2, client_id: b.message.clientId, content: "third while unreachable" },
    ]);
    await until(c.outbox, (o) => o.length === 0);
    const snapshot = await until(c.chat(chat.id), (s) => s.messages.length === 2);
    expect(snapshot.items.map((i) => [i.content, i.status])).toEqual([
      ["first while unreachable", "sent"],
      ["third while unreachable", "sent"],
    ]);
  });
});

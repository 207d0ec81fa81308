/**
 * Coalesced writes (socket/coalesce-writes.ts): the packets a connection is sent in one turn of
 * the event loop reach the kernel in one write, whole and in order. Counted on the server's own
 * TCP sockets: each call of their `_write`/`_writev` is one system call.
 *
 * On the in-memory adapter only. With the Redis adapter a broadcast reaches this node's own
 * sockets only once Redis has answered its publish (socket.io-adapter's ClusterAdapter awaits
 * the publish before the local delivery), so the ack and the broadcasts leave in the turns
 * their Redis replies arrive in: run there (five times), the sender's device got two writes (the
 * ack, then both broadcasts) and the other device one, but how Redis's replies split across
 * reads decides those counts, so there is nothing exact to assert. The coalescing code is the
 * same on every adapter.
 */
import type { Socket as NetSocket } from "node:net";
import { afterAll, beforeAll, expect, test } from "vitest";
import type { ChatMessage, ChatSummary } from "../../protocol/index.js";
import {
  type ClientSocket,
  eventually,
  recordEvents,
  startTestServer,
  type TestServer,
} from "../helpers/server.js";
import { ok, userId } from "./support.js";

let server: TestServer;

beforeAll(async () => {
  server = await startTestServer();
});
afterAll(async () => {
  await server?.close();
});

/** Counts the writes of the server's TCP socket under a client's connection. */
function countWrites(client: ClientSocket): { readonly count: number } {
  const socket = server.app.io.of("/").sockets.get(client.id ?? "");
  const raw = (socket?.conn.transport as unknown as { socket?: { _socket?: NetSocket } })?.socket
    ?._socket as (NetSocket & Record<string, unknown>) | undefined;
  if (!raw) throw new Error("no TCP socket under the connection");
  const counter = { count: 0 };
  for (const name of ["_write", "_writev"] as const) {
    const original = raw[name] as (...args: unknown[]) => unknown;
    raw[name] = function (this: unknown, ...args: unknown[]) {
      counter.count++;
      return original.apply(this, args);
    };
  }
  return counter;
}

test("a message to two devices: one write to each, every packet delivered in order", async () => {
  const id = userId("coalesce");
  const a = await server.connectAs(id);
  const b = await server.connectAs(id);
  const { chat } = await ok(a, "chat:create", { title: "Writes" });
  await ok(a, "chat:open", { chatId: chat.id });
  await ok(b, "chat:open", { chatId: chat.id });
  // Whatever the create and the opens still had on their way (stats:updated is debounced by a
  // second) arrives before the count starts.
  const recA = recordEvents(a);
  const recB = recordEvents(b);
  await eventually(() => expect(recA.of("stats:updated").length).toBeGreaterThan(0), 5000);
  await eventually(() => expect(recB.of("stats:updated").length).toBeGreaterThan(0), 5000);
  recA.events.length = 0;
  recB.events.length = 0;

  const writesA = countWrites(a);
  const writesB = countWrites(b);
  const { message } = await ok(a, "message:send", {
    chatId: chat.id,
    clientId: "w-1",
    content: "one write",
  });
  for (const rec of [recA, recB]) {
    await eventually(() => {
      expect(rec.events.map((e) => e.name)).toEqual(["message:created", "chat:updated"]);
    });
    expect(rec.of<{ message: ChatMessage }>("message:created")[0]?.message).toEqual(message);
    expect(rec.of<{ chat: ChatSummary }>("chat:updated")[0]?.chat.lastSeq).toBe(message.seq);
  }
  // A: the ack, message:created and chat:updated; B: the last two. One system call each
  // (Engine.IO alone writes each packet on its own: three and two).
  expect(writesA.count).toBe(1);
  expect(writesB.count).toBe(1);
});

/** Records the bytes of each write of the server's TCP socket under a client's connection. */
function recordWrites(client: ClientSocket): string[] {
  const socket = server.app.io.of("/").sockets.get(client.id ?? "");
  const raw = (socket?.conn.transport as unknown as { socket?: { _socket?: NetSocket } })?.socket
    ?._socket as (NetSocket & Record<string, unknown>) | undefined;
  if (!raw) throw new Error("no TCP socket under the connection");
  const writes: string[] = [];
  const text = (chunk: unknown) =>
    Buffer.isBuffer(chunk) ? chunk.toString("latin1") : String(chunk);
  type Write = (this: unknown, ...args: unknown[]) => unknown;
  const write = raw._write as Write;
  const writev = raw._writev as Write;
  raw._write = function (this: unknown, chunk: unknown, ...rest: unknown[]) {
    writes.push(text(chunk));
    return write.apply(this, [chunk, ...rest]);
  };
  raw._writev = function (this: unknown, chunks: { chunk: unknown }[], ...rest: unknown[]) {
    writes.push(chunks.map((c) => text(c.chunk)).join(""));
    return writev.apply(this, [chunks, ...rest]);
  };
  return writes;
}

test("stats:updated goes out with the user's next message: in the same write", async () => {
  const id = userId("coalesce-stats");
  const a = await server.connectAs(id);
  const b = await server.connectAs(id);
  const { chat } = await ok(a, "chat:create", { title: "Stats" });
  await ok(a, "chat:open", { chatId: chat.id });
  await ok(b, "chat:open", { chatId: chat.id });
  const recB = recordEvents(b);
  await eventually(() => expect(recB.of("stats:updated").length).toBeGreaterThan(0), 5000);
  recB.events.length = 0;

  const writesB = recordWrites(b);
  // A message every 50 ms for up to 4 s: the stats read a second after the first one are held
  // for the next (within 0.5 s) and written with it.
  let sent = 0;
  const deadline = Date.now() + 4000;
  while (recB.of("stats:updated").length === 0 && Date.now() < deadline) {
    await ok(a, "message:send", { chatId: chat.id, clientId: `s-${sent}`, content: `m ${sent}` });
    sent++;
    await new Promise((r) => setTimeout(r, 50));
  }
  await eventually(() => expect(recB.of("stats:updated").length).toBeGreaterThan(0), 3000);
  const withStats = writesB.filter((w) => w.includes('"stats:updated"'));
  expect(withStats.length).toBeGreaterThan(0);
  for (const w of withStats) expect(w).toContain('"message:created"');
  // And the stats are the user's counters as user:stats reports them once the sends settle.
  const { stats } = await ok(a, "user:stats", {});
  await eventually(() =>
    expect(recB.of<{ stats: unknown }>("stats:updated").at(-1)).toEqual({ stats }),
  );
});

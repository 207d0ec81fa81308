/**
 * Redis failure: two nodes share a dedicated redis-server that this test spawns (never the
 * shared one on 6379). The redis-server is SIGKILLed while a user's devices are connected to
 * both nodes: the nodes keep serving (sends are stored and acked, devices on the sender's node
 * get live events); when redis-server comes back on the same port, cross-node events resume by
 * themselves, and every device gets every acknowledged message exactly once after catching up
 * with `message:sync` from the last seq it saw.
 */
import { randomBytes } from "node:crypto";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import type { Ack, ChatMessage, CommandResults } from "../../protocol/index.js";
import { rooms } from "../../server/src/socket/types.js";
import { freePort, ping, RedisProcess } from "../helpers/redis-process.js";
import {
  type ClientSocket,
  eventually,
  startTestServer,
  type TestServer,
} from "../helpers/server.js";

const ACK_MS = 5000;

/** A device: a socket plus every message it has seen, by seq (live or through sync). */
interface Device {
  name: string;
  socket: ClientSocket;
  /** seqs of live `message:created` events, in arrival order. */
  live: number[];
  seen: Map<number, ChatMessage>;
}

function track(name: string, socket: ClientSocket, chatId: () => string): Device {
  const d: Device = { name, socket, live: [], seen: new Map() };
  socket.on("message:created", ({ message }) => {
    if (message.chatId !== chatId()) return;
    d.live.push(message.seq);
    d.seen.set(message.seq, message);
  });
  return d;
}

/** The highest seq up to which the device has seen every message (its sync point). */
function lastContiguous(d: Device): number {
  let s = 0;
  while (d.seen.has(s + 1)) s++;
  return s;
}

/** Polls `check` until it is true (true) or `timeoutMs` passes (false). */
async function waitUntil(check: () => boolean, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 20));
  }
  return true;
}

type SendAck = Ack<CommandResults["message:send"]>;

const redis = new RedisProcess(await freePort());
let nodeA: TestServer;
let nodeB: TestServer;
let sql: postgres.Sql;
let chatId = "";
/** Every acknowledged message: seq → clientId. */
const acked = new Map<number, string>();
let sendCounter = 0;

async function send(d: Device, label: string): Promise<ChatMessage> {
  const clientId = `${label}-${++sendCounter}`;
  const ack = (await d.socket.timeout(ACK_MS).emitWithAck("message:send", {
    chatId,
    clientId,
    content: `${label} from ${d.name}`,
  })) as SendAck;
  if (!ack.ok) throw new Error(`send from ${d.name} refused: ${JSON.stringify(ack.error)}`);
  expect(ack.data.duplicate).toBe(false);
  expect(ack.data.message.clientId).toBe(clientId);
  expect(acked.has(ack.data.message.seq)).toBe(false);
  acked.set(ack.data.message.seq, clientId);
  return ack.data.message;
}

/**
 * Sends probes from `from` until one reaches `to` live (bounded): cross-node delivery works.
 * Every probe is an acknowledged message like any other.
 */
async function probeUntilDelivered(from: Device, to: Device, timeoutMs = 20_000): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  let probes = 0;
  for (;;) {
    probes++;
    const m = await send(from, "probe");
    if (await waitUntil(() => to.live.includes(m.seq), 750)) return probes;
    if (Date.now() > deadline) {
      throw new Error(
        `no probe from ${from.name} reached ${to.name} within ${timeoutMs} ms (${probes} probes)`,
      );
    }
  }
}

beforeAll(async () => {
  await redis.start();
  const prefix = `fault-${randomBytes(4).toString("hex")}`;
  nodeA = await startTestServer({ redisUrl: redis.url, redisKeyPrefix: prefix });
  nodeB = await startTestServer({
    redisUrl: redis.url,
    redisKeyPrefix: prefix,
    databaseUrl: nodeA.databaseUrl,
  });
  sql = postgres(nodeA.databaseUrl, { max: 1, onnotice: () => {} });
});

afterAll(async () => {
  await sql?.end();
  // The Redis clients' quit() needs a Redis to talk to: bring it back if a test left it down.
  if (!redis.running) await redis.start().catch(() => {});
  // The first node owns (and drops) the database: close it last.
  await nodeB?.close();
  await nodeA?.close();
  await redis.kill();
});

describe("Redis dies and comes back", () => {
  test("nodes keep serving; cross-node events resume; every device catches up exactly", async () => {
    const user = `user_redis_${randomBytes(4).toString("hex")}`;
    const a1 = track("a1", await nodeA.connectAs(user), () => chatId);
    const a2 = track("a2", await nodeA.connectAs(user), () => chatId);
    const b1 = track("b1", await nodeB.connectAs(user), () => chatId);
    const devices = [a1, a2, b1];
    // Both nodes see all three sockets through Redis: both adapters are subscribed.
    for (const node of [nodeA, nodeB]) {
      await eventually(async () => {
        expect(await node.app.io.in(rooms.user(user)).fetchSockets()).toHaveLength(3);
      });
    }

    const created = await a1.socket.timeout(ACK_MS).emitWithAck("chat:create", { title: "Redis" });
    if (!created.ok) throw new Error(created.error.message);
    chatId = created.data.chat.id;
    for (const d of devices) {
      const opened = await d.socket.timeout(ACK_MS).emitWithAck("chat:open", { chatId });
      expect(opened.ok).toBe(true);
    }

    // Before the fault: a message from node A reaches every device live.
    const first = await send(a1, "before");
    expect(first.seq).toBe(1);
    await eventually(() => {
      for (const d of devices) expect(d.live).toEqual([1]);
    });

    // ---- Redis dies.
    await redis.kill();
    expect(await ping(redis.port, 200)).toBe(false);

    // The nodes keep serving: liveness and readiness (Redis is not part of it), reads, sends.
    for (const node of [nodeA, nodeB]) {
      const live = await fetch(`${node.url}/healthz`, { signal: AbortSignal.timeout(ACK_MS) });
      expect(live.status).toBe(200);
      const ready = await fetch(`${node.url}/readyz`, { signal: AbortSignal.timeout(ACK_MS) });
      expect(ready.status).toBe(200);
    }
    const list = (await b1.socket.timeout(ACK_MS).emitWithAck("chat:list", {})) as Ack<
      CommandResults["chat:list"]
    >;
    if (!list.ok) throw new Error(list.error.message);
    expect(list.data.chats.map((c) => c.id)).toEqual([chatId]);

    // A new device can still connect (auth and rate limits need no Redis) and open the chat.
    const late = await nodeB.connectAs(user);
    const lateOpen = (await late.timeout(ACK_MS).emitWithAck("chat:open", { chatId })) as Ack<
      CommandResults["chat:open"]
    >;
    if (!lateOpen.ok) throw new Error(lateOpen.error.message);
    expect(lateOpen.data.messages.map((m) => m.seq)).toEqual([1]);
    late.disconnect();

    const duringA = [await send(a1, "down"), await send(a2, "down"), await send(a1, "down")];
    const duringB = [await send(b1, "down")];
    expect([...duringA, ...duringB].map((m) => m.seq)).toEqual([2, 3, 4, 5]);
    // Devices on the sender's node still get the live events (local rooms need no Redis)…
    await eventually(() => {
      for (const d of [a1, a2]) expect(d.live).toEqual([1, 2, 3, 4]);
      expect(b1.live).toEqual([1, 5]);
    });
    // …and the rows are in the durable log.
    const stored = await sql<{ seq: string }[]>`
      select seq from chat_memory where session_id = ${chatId} order by seq`;
    expect(stored.map((r) => Number(r.seq))).toEqual([1, 2, 3, 4, 5]);

    // ---- Redis comes back on the same port; nobody reconnects anything by hand.
    await redis.start();
    await probeUntilDelivered(a1, b1);
    await probeUntilDelivered(b1, a1);
    // Once both directions work, one more message reaches every device live.
    const after = await send(a2, "after");
    await eventually(() => {
      for (const d of devices) expect(d.seen.get(after.seq)?.clientId).toBe(acked.get(after.seq));
    });

    // Every device has a real gap to fill: node B's outage message never reached node A, and
    // node A's never reached node B.
    expect(lastContiguous(a1)).toBe(4);
    expect(lastContiguous(a2)).toBe(4);
    expect(lastContiguous(b1)).toBeLessThan(4);

    // ---- Catch-up: each device syncs from the last seq up to which it has everything.
    const total = acked.size;
    expect([...acked.keys()].sort((x, y) => x - y)).toEqual(
      Array.from({ length: total }, (_, i) => i + 1),
    );
    for (const d of devices) {
      let afterSeq = lastContiguous(d);
      const synced: number[] = [];
      for (let page = 0; ; page++) {
        expect(page).toBeLessThan(50);
        const res = await d.socket
          .timeout(ACK_MS)
          .emitWithAck("message:sync", { chatId, afterSeq, limit: 3 });
        if (!res.ok) throw new Error(`sync on ${d.name}: ${JSON.stringify(res.error)}`);
        for (const m of res.data.messages) {
          expect(m.seq).toBeGreaterThan(afterSeq);
          synced.push(m.seq);
          d.seen.set(m.seq, m);
        }
        afterSeq = res.data.lastSeq;
        if (!res.data.hasMore) break;
      }
      // The sync itself returned each message once, in order, with nothing before the sync point.
      expect(synced).toEqual([...synced].sort((x, y) => x - y));
      expect(new Set(synced).size).toBe(synced.length);
      expect(afterSeq).toBe(total);
      // The device now has exactly 1..N, each the acknowledged message for its seq.
      const seqs = [...d.seen.keys()].sort((x, y) => x - y);
      expect(seqs, d.name).toEqual(Array.from({ length: total }, (_, i) => i + 1));
      for (const [seq, m] of d.seen) expect(m.clientId).toBe(acked.get(seq));
    }
    // The database holds each acknowledged message exactly once.
    const rows = await sql<{ seq: string; client_id: string }[]>`
      select seq, client_id from chat_memory where session_id = ${chatId} order by seq`;
    expect(rows.map((r) => [Number(r.seq), r.client_id])).toEqual(
      [...acked.entries()].sort((x, y) => x[0] - y[0]),
    );
  });
});

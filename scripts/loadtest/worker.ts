/**
 * One load-generator process (forked by run.ts, so each has its own event loop and its own
 * open-file limit). It owns a slice of the users: connects their devices (real socket.io-client
 * sockets) and its share of idle sockets, creates and opens the users' chats, then, on command
 * from the orchestrator, sends messages and records send→ack and send→delivery latencies.
 * Every loop is bounded by a count and a deadline.
 */
import { io, type Socket } from "socket.io-client";
import { mintSessionToken } from "../../server/src/auth/dev-keys.js";
import { openRaw, RawConnectError } from "./raw-client.js";
import { nowMs } from "./stats.js";

/**
 * How idle sockets (the ones the connection phases open, close and open again) connect:
 * `socket.io` with a socket.io-client instance each, as an app does; `raw` with raw-client.ts
 * (a TCP socket speaking WebSocket, Engine.IO v4 and Socket.IO v5 itself), which costs the load
 * generator a fraction of the CPU, so that the server, not the generator, bounds the
 * handshakes per second.
 */
export type HandshakeClient = "raw" | "socket.io";

export interface WorkerInit {
  /** Server URLs; device d of a user connects to urls[(user + d) % urls.length]. */
  urls: string[];
  userIds: string[];
  devicesPerUser: number;
  chatsPerUser: number;
  privateKeyPem: string;
  authorizedParty: string;
  /** Users that only hold one open socket each and never send (idle connections). */
  idleUserIds: string[];
  /** Bare baseline server: no auth, no chats in the database. */
  bare: boolean;
  /** Handshakes in flight at once per worker. */
  connectConcurrency: number;
  /** The client of the idle sockets (devices that send always use socket.io-client). */
  handshakeClient: HandshakeClient;
}

export type WorkerCommand =
  | { type: "init"; init: WorkerInit }
  | { type: "connect" }
  | { type: "reconnect" }
  | { type: "prepare" }
  | { type: "send"; ratePerSecond: number; durationMs: number }
  | { type: "saturate"; durationMs: number }
  | { type: "report" }
  | { type: "close" };

interface Device {
  socket: Socket;
  user: number;
}

let init: WorkerInit;
let tokens = new Map<string, string>();
const devices: Device[] = [];
/** An open idle connection, whichever client holds it. */
interface IdleConn {
  close(): void;
}
const idleSockets: IdleConn[] = [];
const chatsByUser: string[][] = [];
const ackLatencies: number[] = [];
const deliveryLatencies: number[] = [];
const errors: Record<string, number> = {};
/** Per (device index, chat id): seqs (or message ids on the bare server) received. */
const received = new Map<string, Set<string>>();
let duplicates = 0;
let acked = 0;
/** Messages acked per chat, to check completeness. */
const ackedPerChat = new Map<string, number>();
let counter = 0;

function countError(code: string) {
  errors[code] = (errors[code] ?? 0) + 1;
}

function post(message: unknown) {
  process.send?.(message);
}

/** One token per user, minted before the clock starts: signing is the client's cost, not the server's. */
async function tokensFor(userIds: string[]): Promise<Map<string, string>> {
  const tokens = new Map<string, string>();
  for (const userId of userIds) {
    tokens.set(
      userId,
      init.bare
        ? userId
        : await mintSessionToken(init.privateKeyPem, userId, {
            ttlSeconds: 3600,
            authorizedParty: init.authorizedParty,
          }),
    );
  }
  return tokens;
}

async function open(url: string, token: string): Promise<Socket> {
  const socket = io(url, {
    auth: { token },
    transports: ["websocket"],
    reconnection: false,
    forceNew: true,
    timeout: 20_000,
  });
  await new Promise<void>((resolve) => {
    socket.once("connect", () => resolve());
    socket.once("connect_error", (e: Error & { data?: { code?: string } }) => {
      countError(`connect:${e.data?.code ?? e.message}`);
      resolve();
    });
  });
  return socket;
}

/** Opens one idle connection with the configured client; undefined when it failed. */
async function openIdle(url: string, token: string): Promise<IdleConn | undefined> {
  if (init.handshakeClient === "raw") {
    try {
      return await openRaw(url, { token });
    } catch (e) {
      countError(`connect:${e instanceof RawConnectError ? e.code : String(e)}`);
      return undefined;
    }
  }
  const socket = await open(url, token);
  return socket.connected ? { close: () => socket.disconnect() } : undefined;
}

/** This process's CPU time so far (user + system), µs: the load generator's own cost. */
function cpuUs(): number {
  const u = process.cpuUsage();
  return u.user + u.system;
}

async function connectAll(): Promise<void> {
  const jobs: (() => Promise<void>)[] = [];
  init.idleUserIds.forEach((userId, i) => {
    jobs.push(async () => {
      const conn = await openIdle(
        init.urls[i % init.urls.length] as string,
        tokens.get(userId) as string,
      );
      if (conn) idleSockets.push(conn);
    });
  });
  init.userIds.forEach((userId, user) => {
    for (let d = 0; d < init.devicesPerUser; d++) {
      jobs.push(async () => {
        const url = init.urls[(user + d) % init.urls.length] as string;
        const socket = await open(url, tokens.get(userId) as string);
        if (socket.connected) {
          const index = devices.length;
          devices.push({ socket, user });
          socket.on(
            "message:created",
            (event: { message: { chatId: string; seq: number; content: string } }) =>
              onDelivered(
                index,
                event.message.chatId,
                String(event.message.seq),
                event.message.content,
              ),
          );
        }
      });
    }
  });
  const started = nowMs();
  const cpuBefore = cpuUs();
  let next = 0;
  await Promise.all(
    Array.from({ length: init.connectConcurrency }, async () => {
      while (next < jobs.length) {
        const job = jobs[next++];
        await job?.();
      }
    }),
  );
  post({
    type: "connected",
    sockets: devices.length + idleSockets.length,
    ms: nowMs() - started,
    cpuUs: cpuUs() - cpuBefore,
    errors,
  });
}

/**
 * Closes the idle sockets, then opens them again with the same tokens: reconnects of users the
 * server already knows (no provisioning), as after a deploy or a network blip.
 */
async function reconnectIdle(): Promise<void> {
  const cpuBefore = cpuUs();
  for (const conn of idleSockets.splice(0)) conn.close();
  const ids = init.idleUserIds;
  const started = nowMs();
  let next = 0;
  await Promise.all(
    Array.from({ length: init.connectConcurrency }, async () => {
      while (next < ids.length) {
        const i = next++;
        const conn = await openIdle(
          init.urls[i % init.urls.length] as string,
          tokens.get(ids[i] as string) as string,
        );
        if (conn) idleSockets.push(conn);
      }
    }),
  );
  post({
    type: "reconnected",
    sockets: idleSockets.length,
    ms: nowMs() - started,
    cpuUs: cpuUs() - cpuBefore,
    errors,
  });
}

function onDelivered(deviceIndex: number, chatId: string, id: string, content: string) {
  const key = `${deviceIndex}|${chatId}`;
  let set = received.get(key);
  if (!set) {
    set = new Set();
    received.set(key, set);
  }
  if (set.has(id)) {
    duplicates++;
    return;
  }
  set.add(id);
  const sentAt = Number(/^t=(\d+(?:\.\d+)?)/.exec(content)?.[1]);
  // The sender's own socket sees its message too; count other devices only.
  const sender = /;d=(\d+)/.exec(content)?.[1];
  if (Number.isFinite(sentAt) && sender !== String(deviceIndex)) {
    deliveryLatencies.push(nowMs() - sentAt);
  }
}

async function ack<T>(socket: Socket, event: string, payload: unknown): Promise<T | undefined> {
  try {
    const result = (await socket.timeout(20_000).emitWithAck(event, payload)) as
      | { ok: true; data: T }
      | { ok: false; error: { code: string } };
    if (result.ok) return result.data;
    countError(result.error.code);
  } catch {
    countError("ACK_TIMEOUT");
  }
  return undefined;
}

/** Creates each user's chats from their first device, then every device opens them. */
async function prepare(): Promise<void> {
  const firstDevice = new Map<number, Device>();
  for (const d of devices) if (!firstDevice.has(d.user)) firstDevice.set(d.user, d);
  await Promise.all(
    [...firstDevice.entries()].map(async ([user, device]) => {
      const chats: string[] = [];
      for (let c = 0; c < init.chatsPerUser; c++) {
        if (init.bare) {
          chats.push(`bare-${init.userIds[user]}-${c}`);
          continue;
        }
        const data = await ack<{ chat: { id: string } }>(device.socket, "chat:create", {
          title: `load ${c}`,
        });
        if (data) chats.push(data.chat.id);
      }
      chatsByUser[user] = chats;
    }),
  );
  await Promise.all(
    devices.map(async (d) => {
      for (const chatId of chatsByUser[d.user] ?? []) await ack(d.socket, "chat:open", { chatId });
    }),
  );
  post({ type: "prepared" });
}

function senders(): { device: Device; index: number }[] {
  const seen = new Set<number>();
  const out: { device: Device; index: number }[] = [];
  devices.forEach((device, index) => {
    if (!seen.has(device.user)) {
      seen.add(device.user);
      out.push({ device, index });
    }
  });
  return out;
}

async function sendOne(device: Device, index: number): Promise<void> {
  const chats = chatsByUser[device.user] ?? [];
  if (chats.length === 0) return;
  const n = counter++;
  const chatId = chats[n % chats.length] as string;
  const t = nowMs();
  const data = await ack<unknown>(device.socket, "message:send", {
    chatId,
    clientId: `lt-${process.pid}-${n}-${Math.random().toString(36).slice(2, 8)}`,
    content: `t=${t};d=${index};load test message ${n}`,
  });
  if (data !== undefined) {
    acked++;
    ackLatencies.push(nowMs() - t);
    ackedPerChat.set(chatId, (ackedPerChat.get(chatId) ?? 0) + 1);
  }
}

/** Open loop: each sender emits at its share of the offered rate, without waiting for acks. */
async function send(ratePerSecond: number, durationMs: number): Promise<void> {
  const list = senders();
  const perSender = ratePerSecond / Math.max(1, list.length);
  const intervalMs = 1000 / Math.max(perSender, 0.001);
  const deadline = nowMs() + durationMs;
  const inflight: Promise<void>[] = [];
  await Promise.all(
    list.map(async ({ device, index }, i) => {
      // Spread the senders over one interval so they do not fire in lockstep.
      let next = nowMs() + (intervalMs * i) / list.length;
      const maxSends = Math.ceil(durationMs / intervalMs) + 1;
      for (let k = 0; k < maxSends && next < deadline; k++) {
        const wait = next - nowMs();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
        inflight.push(sendOne(device, index));
        next += intervalMs;
      }
    }),
  );
  await Promise.all(inflight);
  post({ type: "sent" });
}

/** Closed loop: each sender sends its next message as soon as the previous one is acked. */
async function saturate(durationMs: number): Promise<void> {
  const before = acked;
  const started = nowMs();
  const deadline = started + durationMs;
  await Promise.all(
    senders().map(async ({ device, index }) => {
      for (let k = 0; k < 1_000_000 && nowMs() < deadline; k++) await sendOne(device, index);
    }),
  );
  post({ type: "saturated", acked: acked - before, ms: nowMs() - started });
}

/** Waits (bounded) until every acked message has reached every device that should see it. */
async function settle(timeoutMs: number): Promise<void> {
  const deadline = nowMs() + timeoutMs;
  while (nowMs() < deadline) {
    const { expected, got } = completeness();
    if (got >= expected) return;
    await new Promise((r) => setTimeout(r, 20));
  }
}

function completeness(): { expected: number; got: number } {
  let expected = 0;
  let got = 0;
  devices.forEach((d, index) => {
    for (const chatId of chatsByUser[d.user] ?? []) {
      expected += ackedPerChat.get(chatId) ?? 0;
      got += received.get(`${index}|${chatId}`)?.size ?? 0;
    }
  });
  return { expected, got };
}

async function report() {
  await settle(3000);
  // Completeness: every device that opened a chat must have received every acked message of it.
  const { expected, got } = completeness();
  post({
    type: "report",
    ackLatencies,
    deliveryLatencies,
    errors,
    acked,
    expectedDeliveries: expected,
    deliveries: got,
    duplicates,
  });
  ackLatencies.length = 0;
  deliveryLatencies.length = 0;
}

process.on("message", (cmd: WorkerCommand) => {
  const run = async () => {
    switch (cmd.type) {
      case "init":
        init = cmd.init;
        // Minted now, before the harness samples the server's CPU for the first handshakes.
        tokens = await tokensFor([...init.userIds, ...init.idleUserIds]);
        post({ type: "ready" });
        return;
      case "connect":
        return connectAll();
      case "reconnect":
        return reconnectIdle();
      case "prepare":
        return prepare();
      case "send":
        return send(cmd.ratePerSecond, cmd.durationMs);
      case "saturate":
        return saturate(cmd.durationMs);
      case "report":
        return report();
      case "close":
        for (const d of devices) d.socket.disconnect();
        for (const conn of idleSockets) conn.close();
        post({ type: "closed" });
        return;
    }
  };
  run().catch((err) => post({ type: "error", error: String(err) }));
});

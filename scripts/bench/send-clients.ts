/**
 * The client side of `npm run bench:send` (send-cost.ts), forked as its own process so that
 * none of its work is counted as the server's: `users × devices` real socket.io-client sockets
 * (plus `idle` sockets that only stay connected), each user's chats opened on all their
 * devices, then on command a fixed number of messages at a fixed rate (open loop, from each
 * user's first device in turn). A batch ends when every send is answered and every device of
 * the chat has the message (or a deadline passes). Every loop is bounded in count and time.
 */
import { io, type Socket } from "socket.io-client";

export interface ClientsInit {
  url: string;
  /** One token per user (the bare server takes any string as the user's id). */
  tokens: string[];
  devicesPerUser: number;
  chatsPerUser: number;
  /** Tokens of idle sockets: connected, never sending. */
  idleTokens: string[];
  bare: boolean;
}

export type ClientsCommand =
  | { type: "init"; init: ClientsInit }
  | { type: "send"; count: number; ratePerSecond: number; timeoutMs: number }
  | { type: "close" };

export interface BatchReport {
  type: "sent";
  acked: number;
  errors: Record<string, number>;
  /** Client-observed send→ack, ms, sorted. */
  ackMs: number[];
  /** Deliveries of message:created expected (devices of each acked message's chat) and got. */
  expected: number;
  delivered: number;
  /** Wall time from the first send until the last ack and delivery, ms. */
  ms: number;
}

const post = (m: unknown) => process.send?.(m);
let init: ClientsInit;
const devices: { socket: Socket; user: number }[] = [];
const idle: Socket[] = [];
const chats: string[][] = [];
let delivered = 0;
let counter = 0;

async function open(token: string): Promise<Socket> {
  const socket = io(init.url, {
    auth: { token },
    transports: ["websocket"],
    reconnection: false,
    forceNew: true,
    timeout: 20_000,
  });
  await new Promise<void>((resolve, reject) => {
    socket.once("connect", () => resolve());
    socket.once("connect_error", (e) => reject(e));
  });
  return socket;
}

async function ack<T>(socket: Socket, event: string, payload: unknown): Promise<T> {
  const r = (await socket.timeout(20_000).emitWithAck(event, payload)) as
    | { ok: true; data: T }
    | { ok: false; error: { code: string; message: string } };
  if (!r.ok) throw new Error(`${event}: ${r.error.code} ${r.error.message}`);
  return r.data;
}

/** Runs `jobs` with at most `n` at once. */
async function limited(jobs: (() => Promise<void>)[], n: number): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: n }, async () => {
      while (next < jobs.length) await jobs[next++]?.();
    }),
  );
}

async function setUp(): Promise<void> {
  const jobs: (() => Promise<void>)[] = [];
  init.tokens.forEach((token, user) => {
    for (let d = 0; d < init.devicesPerUser; d++) {
      jobs.push(async () => {
        const socket = await open(token);
        socket.on("message:created", () => {
          delivered++;
        });
        devices.push({ socket, user });
      });
    }
  });
  for (const token of init.idleTokens) jobs.push(async () => void idle.push(await open(token)));
  await limited(jobs, 50);
  const first = new Map<number, Socket>();
  for (const d of devices) if (!first.has(d.user)) first.set(d.user, d.socket);
  await limited(
    [...first].map(([user, socket]) => async () => {
      const list: string[] = [];
      for (let c = 0; c < init.chatsPerUser; c++) {
        if (init.bare) list.push(`bare-${user}-${c}-${Math.random().toString(36).slice(2)}`);
        else list.push((await ack<{ chat: { id: string } }>(socket, "chat:create", {})).chat.id);
      }
      chats[user] = list;
    }),
    50,
  );
  await limited(
    devices.map((d) => async () => {
      for (const chatId of chats[d.user] ?? []) await ack(d.socket, "chat:open", { chatId });
    }),
    50,
  );
  post({ type: "ready", sockets: devices.length + idle.length });
}

/** `count` sends at `ratePerSecond`, round robin over the users' first devices, open loop. */
async function send(count: number, ratePerSecond: number, timeoutMs: number): Promise<void> {
  const senders: { socket: Socket; user: number }[] = [];
  const seen = new Set<number>();
  for (const d of devices) {
    if (!seen.has(d.user)) {
      seen.add(d.user);
      senders.push(d);
    }
  }
  const errors: Record<string, number> = {};
  const ackMs: number[] = [];
  let acked = 0;
  let expected = 0;
  const deliveredBefore = delivered;
  const started = performance.now();
  const inflight: Promise<void>[] = [];
  for (let i = 0; i < count; i++) {
    const due = started + (i * 1000) / ratePerSecond;
    const wait = due - performance.now();
    if (wait > 1) await new Promise((r) => setTimeout(r, wait));
    const sender = senders[i % senders.length] as { socket: Socket; user: number };
    const list = chats[sender.user] ?? [];
    const chatId = list[Math.floor(i / senders.length) % list.length] as string;
    const n = counter++;
    const t = performance.now();
    inflight.push(
      sender.socket
        .timeout(timeoutMs)
        .emitWithAck("message:send", {
          chatId,
          clientId: `b-${process.pid}-${n}`,
          content: `t=${Math.round(t)};d=${sender.user};bench message ${n}`,
        })
        .then(
          (r: { ok: boolean; error?: { code: string } }) => {
            if (r.ok) {
              acked++;
              expected += init.devicesPerUser;
              ackMs.push(performance.now() - t);
            } else {
              const code = r.error?.code ?? "?";
              errors[code] = (errors[code] ?? 0) + 1;
            }
          },
          () => {
            errors.ACK_TIMEOUT = (errors.ACK_TIMEOUT ?? 0) + 1;
          },
        ),
    );
  }
  await Promise.all(inflight);
  const deadline = performance.now() + timeoutMs;
  while (delivered - deliveredBefore < expected && performance.now() < deadline) {
    await new Promise((r) => setTimeout(r, 5));
  }
  const report: BatchReport = {
    type: "sent",
    acked,
    errors,
    ackMs: ackMs.sort((a, b) => a - b),
    expected,
    delivered: delivered - deliveredBefore,
    ms: performance.now() - started,
  };
  post(report);
}

process.on("message", (cmd: ClientsCommand) => {
  const run = async () => {
    if (cmd.type === "init") {
      init = cmd.init;
      await setUp();
    } else if (cmd.type === "send") {
      await send(cmd.count, cmd.ratePerSecond, cmd.timeoutMs);
    } else if (cmd.type === "close") {
      for (const d of devices) d.socket.disconnect();
      for (const s of idle) s.disconnect();
      process.exit(0);
    }
  };
  run().catch((err) => {
    post({ type: "error", error: String(err?.stack ?? err) });
  });
});

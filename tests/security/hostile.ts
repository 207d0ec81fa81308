/**
 * Raw clients for the security tests: HTTP requests and WebSocket handshakes written by hand
 * (any header, any query), a bare Engine.IO/Socket.IO connection over `ws` that does only what
 * the test tells it to, latency figures for a well-behaved user measured during a flood, and the
 * server's reads held up by a lock the test holds.
 */
import { randomBytes } from "node:crypto";
import { type IncomingMessage, request } from "node:http";
import v8 from "node:v8";
import vm from "node:vm";
import type postgres from "postgres";
import { WebSocket } from "ws";
import type { ClientSocket } from "../helpers/server.js";

export interface RawResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** One plain HTTP request to the server (a long-polling request, a preflight). */
/** Status, headers and the whole body (UTF-8) of a response. */
function readResponse(res: IncomingMessage): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    let body = "";
    res.setEncoding("utf8");
    res.on("data", (chunk) => {
      body += chunk;
    });
    res.on("error", reject);
    res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
  });
}

export function httpRequest(
  url: string,
  options: { method?: string; headers?: Record<string, string> } = {},
): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: options.method ?? "GET", headers: options.headers });
    req.on("response", (res) => readResponse(res).then(resolve, reject));
    req.on("error", reject);
    req.end();
  });
}

/**
 * A WebSocket handshake (HTTP Upgrade) with the given headers: resolves 101 when the server
 * upgraded (the socket is then closed), or the refusal's status and body.
 */
export function upgradeRequest(url: string, headers: Record<string, string> = {}) {
  return new Promise<RawResponse>((resolve, reject) => {
    const req = request(url, {
      headers: {
        Connection: "Upgrade",
        Upgrade: "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": randomBytes(16).toString("base64"),
        ...headers,
      },
    });
    req.on("upgrade", (res, socket) => {
      socket.destroy();
      resolve({ status: res.statusCode ?? 101, headers: res.headers, body: "" });
    });
    req.on("response", (res) => readResponse(res).then(resolve, reject));
    req.on("error", reject);
    req.end();
  });
}

/** The Engine.IO WebSocket endpoint of a server at `url` (http://host:port). */
export function engineUrl(url: string, query = ""): string {
  return `${url.replace(/^http/, "ws")}/socket.io/?EIO=4&transport=websocket${query}`;
}

/**
 * A bare WebSocket speaking just enough Engine.IO v4 / Socket.IO v5 to send a CONNECT with
 * `auth`: what a hostile script does, without socket.io-client's manners (it never closes a
 * refused connection, never backs off). Every frame it receives is kept in `frames`.
 */
export class RawSocket {
  readonly frames: string[] = [];
  readonly closed: Promise<{ code: number }>;
  readonly opened: Promise<{ sid: string }>;
  private readonly ws: WebSocket;

  constructor(url: string, options: { headers?: Record<string, string> } = {}) {
    this.ws = new WebSocket(engineUrl(url), { headers: options.headers });
    this.ws.on("error", () => {});
    this.opened = new Promise((resolve, reject) => {
      this.ws.once("message", (data) => {
        const text = String(data);
        if (!text.startsWith("0")) return reject(new Error(`no Engine.IO open: ${text}`));
        resolve(JSON.parse(text.slice(1)) as { sid: string });
      });
      this.ws.once("close", () => reject(new Error("closed before open")));
    });
    this.opened.catch(() => {});
    this.ws.on("message", (data) => {
      const text = String(data);
      // Answer the heartbeat, so only the server's own decisions close the connection.
      if (text === "2") this.ws.send("3");
      this.frames.push(text);
    });
    this.closed = new Promise((resolve) => this.ws.once("close", (code) => resolve({ code })));
  }

  /** Sends a Socket.IO CONNECT for the main namespace with this `auth`. */
  async connect(auth: Record<string, unknown> | undefined): Promise<void> {
    await this.opened;
    this.ws.send(`40${auth ? JSON.stringify(auth) : ""}`);
  }

  /** Sends a raw frame. */
  send(frame: string | Buffer): void {
    this.ws.send(frame);
  }

  /** The Socket.IO CONNECT_ERROR data received, if any. */
  connectError(): { message: string; data?: { code?: string; retryAfterMs?: number } } | undefined {
    const frame = this.frames.find((f) => f.startsWith("44"));
    return frame ? JSON.parse(frame.slice(2)) : undefined;
  }

  get isOpen(): boolean {
    return this.ws.readyState === WebSocket.OPEN;
  }

  /**
   * Stops reading the TCP socket (the kernel's buffers fill, then the server's): a client that
   * no longer reads but keeps its connection, and can still send.
   */
  pauseReading(): void {
    (this.ws as unknown as { _socket: { pause(): void } })._socket.pause();
  }

  /** Sends a Socket.IO EVENT with an ack id: `42<id>[name, payload]`. */
  command(id: number, name: string, payload: unknown): void {
    this.ws.send(`42${id}${JSON.stringify([name, payload])}`);
  }

  /** The ack of command `id` (`43<id>[…]`), once it has arrived. */
  async ack(id: number, timeoutMs = 10_000): Promise<unknown> {
    const prefix = `43${id}[`;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const frame = this.frames.find((f) => f.startsWith(prefix));
      if (frame) return (JSON.parse(frame.slice(prefix.length - 1)) as unknown[])[0];
      if (Date.now() > deadline) throw new Error(`no ack ${id} within ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  terminate(): void {
    this.ws.terminate();
  }
}

/** Median and 95th percentile of `samples` (milliseconds), rounded to 0.1 ms. */
export function percentiles(samples: number[]): { n: number; median: number; p95: number } {
  const sorted = [...samples].sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0;
  const round = (x: number) => Math.round(x * 10) / 10;
  return { n: sorted.length, median: round(at(0.5)), p95: round(at(0.95)) };
}

/**
 * A well-behaved user's view of the server during a flood: runs `chat:list` (a database read)
 * and `user:stats` in turn, one at a time, about every `intervalMs` (a client that respects the
 * limits), until `flood` settles, bounded by `maxSamples`. Returns the round trips that started
 * while the flood was running, in milliseconds, and every failure.
 */
export async function measureDuring(
  socket: ClientSocket,
  flood: Promise<unknown>,
  options: { maxSamples?: number; intervalMs?: number } = {},
): Promise<{ latencies: number[]; failures: string[]; floodResult: unknown }> {
  const { maxSamples = 5000, intervalMs = 10 } = options;
  let done = false;
  let floodResult: unknown;
  const settled = flood.then(
    (r) => {
      floodResult = r;
      done = true;
    },
    (e) => {
      floodResult = e;
      done = true;
    },
  );
  const latencies: number[] = [];
  const failures: string[] = [];
  for (let i = 0; i < maxSamples && !done; i++) {
    const started = performance.now();
    try {
      const ack =
        i % 2 === 0
          ? await socket.timeout(5000).emitWithAck("chat:list", {})
          : await socket.timeout(5000).emitWithAck("user:stats", {});
      if (!ack.ok) failures.push(ack.error.code);
    } catch {
      failures.push("NO_ACK_WITHIN_5_S");
    }
    const elapsed = performance.now() - started;
    latencies.push(elapsed);
    // Pacing, not waiting for a condition: a real client sends at human speed.
    if (elapsed < intervalMs) await new Promise((r) => setTimeout(r, intervalMs - elapsed));
  }
  await settled;
  return { latencies, failures, floodResult };
}

/** Garbage-collects (when the runtime allows it) and returns the heap in use, in bytes. */
export async function heapUsed(): Promise<number> {
  const gc = (globalThis as { gc?: () => void }).gc ?? exposeGc();
  for (let i = 0; i < 3; i++) {
    gc?.();
    await new Promise((r) => setImmediate(r));
  }
  return process.memoryUsage().heapUsed;
}

function exposeGc(): (() => void) | undefined {
  try {
    // V8 exposes gc() to new contexts once the flag is set, even after start-up.
    v8.setFlagsFromString("--expose-gc");
    return vm.runInNewContext("gc") as () => void;
  } catch {
    return undefined;
  }
}

/**
 * The server's statements on chat_memory in `database` that wait for a lock (the test holds
 * `lock table chat_memory in access exclusive mode`): its page reads stuck in Postgres.
 */
export async function waitingReads(admin: postgres.Sql, database: string): Promise<number> {
  const rows = await admin`
    select count(*)::int as n from pg_stat_activity
     where datname = ${database} and application_name = 'chat-backend'
       and state = 'active' and wait_event_type = 'Lock' and query like '%chat_memory%'`;
  return rows[0]?.n ?? 0;
}

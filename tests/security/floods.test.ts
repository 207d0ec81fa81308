/**
 * Floods from hostile clients, against a real server and Postgres: connection floods from one
 * address (refused before any token is verified), per-user connection limits under a flood,
 * command floods on one socket (refused, then disconnected), and oversized frames (only that
 * connection closes). During each flood a well-behaved user keeps working: its round-trip
 * latency is measured and printed, and every one of its commands must succeed. Floods are
 * bounded in count and time, on loopback only.
 */
import { randomBytes } from "node:crypto";
import { Worker } from "node:worker_threads";
import { Redis } from "ioredis";
import { afterAll, describe, expect, test } from "vitest";
import { createChatClient } from "../../client-sdk/src/index.js";
import type { ConnectionClosing } from "../../protocol/index.js";
import {
  type ClientSocket,
  eventually,
  startTestServer,
  type TestServer,
  type TestServerOptions,
  testRedisUrl,
  tokenFor,
} from "../helpers/server.js";
import { heapUsed, measureDuring, percentiles, RawSocket } from "./hostile.js";

/** Generous bounds: loopback, one process, other test files running in parallel. */
const P95_BOUND_MS = 500;
const HEAP_GROWTH_BOUND = 64 * 1024 * 1024;

const servers: TestServer[] = [];
afterAll(async () => {
  for (const s of servers.reverse()) await s.close();
});

async function start(options: TestServerOptions): Promise<TestServer> {
  const server = await startTestServer(options);
  servers.push(server);
  return server;
}

/** A connected user with one chat, so that its `chat:list` reads a row. */
async function wellBehaved(server: TestServer, userId: string): Promise<ClientSocket> {
  const socket = await server.connectAs(userId);
  const created = await socket.emitWithAck("chat:create", { title: "still here" });
  expect(created.ok).toBe(true);
  return socket;
}

function report(flood: string, latencies: number[], heap?: { before: number; after: number }) {
  const { n, median, p95 } = percentiles(latencies);
  const mb = (b: number) => Math.round((b / 1024 / 1024) * 10) / 10;
  console.log(
    `[flood] ${flood}: well-behaved user n=${n} median=${median} ms p95=${p95} ms` +
      (heap
        ? `; heap ${mb(heap.before)} MB -> ${mb(heap.after)} MB (growth ${mb(heap.after - heap.before)} MB)`
        : ""),
  );
  return { median, p95 };
}

/** Resolves with the first of `promise` or "timeout" after `ms`: bounds a hostile step. */
function within<T>(promise: Promise<T>, ms: number): Promise<T | "timeout"> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<"timeout">((resolve) => {
      timer = setTimeout(() => resolve("timeout"), ms);
    }),
  ]);
}

/** Runs `count` tasks, `concurrency` at a time. */
async function pool<T>(count: number, concurrency: number, task: (i: number) => Promise<T>) {
  const results: T[] = [];
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < count) {
        const i = next++;
        results[i] = await task(i);
      }
    }),
  );
  return results;
}

/**
 * One hostile handshake over a bare WebSocket: sends CONNECT with `auth` and reports the
 * connect_error it got and whether the server then closed the connection by itself.
 */
async function hostileHandshake(
  server: TestServer,
  auth: Record<string, unknown> | undefined,
  headers: Record<string, string> = {},
) {
  const raw = new RawSocket(server.url, { headers });
  await raw.connect(auth);
  const closed = await within(raw.closed, 5000);
  const error = raw.connectError();
  raw.terminate();
  return {
    code: error?.data?.code ?? (raw.frames.some((f) => f.startsWith("40")) ? "connected" : "none"),
    retryAfterMs: error?.data?.retryAfterMs,
    closedByServer: closed !== "timeout",
  };
}

/** A socket.io-client connection attempt: "connected" or the connect_error data. */
async function clientAttempt(
  server: TestServer,
  token: string,
  extra: Parameters<TestServer["socket"]>[1] = {},
): Promise<{ code: string; retryAfterMs?: number; socket: ClientSocket }> {
  const socket = server.socket({ token }, extra);
  return new Promise((resolve) => {
    socket.once("connect", () => resolve({ code: "connected", socket }));
    socket.once("connect_error", (e: Error & { data?: { code?: string; retryAfterMs?: number } }) =>
      resolve({ code: e.data?.code ?? e.message, retryAfterMs: e.data?.retryAfterMs, socket }),
    );
  });
}

function tally(codes: string[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const c of codes) out[c] = (out[c] ?? 0) + 1;
  return out;
}

async function metric(server: TestServer, pattern: RegExp): Promise<number> {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  return Number(pattern.exec(text)?.[1] ?? 0);
}

describe("connection floods", () => {
  test("a flood from one address is refused RATE_LIMITED with a retry hint, before any token is verified; everyone else is served", async () => {
    const LIMIT = 20;
    const ATTEMPTS = 600;
    const server = await start({
      trustProxy: 1,
      rateLimits: { connectionsPerAddressPerMinute: LIMIT },
    });
    const good = await wellBehaved(server, "user_good_conn");
    const flooder = { "X-Forwarded-For": "198.51.100.66" };
    const before = await heapUsed();

    const { latencies, failures, floodResult } = await measureDuring(
      good,
      pool(ATTEMPTS, 50, () => hostileHandshake(server, { token: "not-a-token" }, flooder)),
    );
    const results = floodResult as Awaited<ReturnType<typeof hostileHandshake>>[];

    // Exactly LIMIT attempts reached token verification (refused there: the token is garbage);
    // every other one was refused before it, with a hint, and its connection closed by the server.
    expect(tally(results.map((r) => r.code))).toEqual({
      TOKEN_INVALID: LIMIT,
      RATE_LIMITED: ATTEMPTS - LIMIT,
    });
    for (const r of results.filter((r) => r.code === "RATE_LIMITED")) {
      expect(r.retryAfterMs).toBeGreaterThan(0);
      expect(r.retryAfterMs).toBeLessThanOrEqual(60_000);
    }
    expect(results.every((r) => r.closedByServer)).toBe(true);
    expect(await metric(server, /^chat_handshakes_total\{outcome="TOKEN_INVALID"\} (\d+)$/m)).toBe(
      LIMIT,
    );

    // The well-behaved user was served throughout.
    expect(failures).toEqual([]);
    expect(latencies.length).toBeGreaterThanOrEqual(20);
    await eventually(() => expect(server.app.io.engine.clientsCount).toBe(1));
    const after = await heapUsed();
    const { p95 } = report(`${ATTEMPTS} handshakes from one address`, latencies, {
      before,
      after,
    });
    expect(p95).toBeLessThan(P95_BOUND_MS);
    expect(after - before).toBeLessThan(HEAP_GROWTH_BOUND);

    // The flooding address stays refused, even behind a forged X-Forwarded-For prefix (only the
    // entry written by the trusted proxy counts); a new user from elsewhere connects.
    const again = await clientAttempt(server, await tokenFor("user_late"), {
      extraHeaders: { "X-Forwarded-For": "203.0.113.9, 198.51.100.66" },
    });
    expect(again.code).toBe("RATE_LIMITED");
    expect(again.retryAfterMs).toBeGreaterThan(0);
    const elsewhere = await clientAttempt(server, await tokenFor("user_late"), {
      extraHeaders: { "X-Forwarded-For": "198.51.100.7" },
    });
    expect(elsewhere.code).toBe("connected");
  });

  test("X-Forwarded-For is ignored unless a proxy is trusted; an IPv6 /64 counts as one address", async () => {
    const direct = await start({ rateLimits: { connectionsPerAddressPerMinute: 5 } });
    const spoofed = await pool(8, 1, (i) =>
      hostileHandshake(direct, undefined, { "X-Forwarded-For": `192.0.2.${i + 1}` }),
    );
    // Every attempt counted against the real peer, 127.0.0.1, whatever it claimed.
    expect(spoofed.map((r) => r.code)).toEqual([
      ...Array(5).fill("TOKEN_MISSING"),
      ...Array(3).fill("RATE_LIMITED"),
    ]);

    const proxied = await start({
      trustProxy: 1,
      rateLimits: { connectionsPerAddressPerMinute: 5 },
    });
    const v6 = await pool(8, 1, (i) =>
      hostileHandshake(proxied, undefined, { "X-Forwarded-For": `2001:db8:1:2::${i + 1}` }),
    );
    expect(v6.map((r) => r.code)).toEqual([
      ...Array(5).fill("TOKEN_MISSING"),
      ...Array(3).fill("RATE_LIMITED"),
    ]);
    const otherNetwork = await hostileHandshake(proxied, undefined, {
      "X-Forwarded-For": "2001:db8:1:3::1",
    });
    expect(otherNetwork.code).toBe("TOKEN_MISSING");
  });

  test("the per-address limit is cluster-wide through Redis, and its keys expire there", async () => {
    const prefix = `flood-${randomBytes(4).toString("hex")}`;
    const options = {
      trustProxy: 1,
      redisUrl: testRedisUrl,
      redisKeyPrefix: prefix,
      rateLimits: { connectionsPerAddressPerMinute: 10 },
    };
    const a = await start(options);
    const b = await start({ ...options, databaseUrl: a.databaseUrl });
    // Both nodes are up and talking to Redis (and the per-address keys are not touched).
    await a.connectAs("user_redis_warm");
    await b.connectAs("user_redis_warm");
    const headers = { "X-Forwarded-For": "198.51.100.23" };
    const results = await pool(16, 4, (i) => hostileHandshake(i % 2 ? a : b, undefined, headers));
    expect(tally(results.map((r) => r.code))).toEqual({ TOKEN_MISSING: 10, RATE_LIMITED: 6 });
    const redis = new Redis(testRedisUrl);
    try {
      const ttl = await redis.pttl(`${prefix}:rl:ip:198.51.100.23`);
      expect(ttl).toBeGreaterThan(0);
      expect(ttl).toBeLessThanOrEqual(60_000);
    } finally {
      redis.disconnect();
    }
  });

  test("bare WebSockets that never send CONNECT are counted against their address at the handshake and closed by the connect deadline", async () => {
    const LIMIT = 5;
    const IDLE = 40;
    const CONNECT_TIMEOUT_MS = 3000;
    const server = await start({
      trustProxy: 1,
      connectTimeoutMs: CONNECT_TIMEOUT_MS,
      rateLimits: { connectionsPerAddressPerMinute: LIMIT },
    });
    const headers = { "X-Forwarded-For": "198.51.100.77" };
    const started = Date.now();
    const idle = Array.from({ length: IDLE }, () => new RawSocket(server.url, { headers }));
    // Every one is a WebSocket (none is refused at the HTTP level) ...
    await Promise.all(idle.map((raw) => raw.opened));
    await eventually(() => expect(server.app.io.engine.clientsCount).toBe(IDLE));
    // ... and every one counted: the address is spent, so a real client from it is refused.
    const late = await clientAttempt(server, await tokenFor("user_after_idle"), {
      extraHeaders: headers,
    });
    expect(late.code).toBe("RATE_LIMITED");
    expect(late.retryAfterMs).toBeGreaterThan(0);
    // The server closes them all: the refused ones (past the limit) after the short refusal
    // deadline, the others after the connect timeout, never Socket.IO's default 45 s.
    const closed = await Promise.all(idle.map((raw) => within(raw.closed, 15_000)));
    expect(closed.filter((c) => c === "timeout")).toEqual([]);
    const elapsed = Date.now() - started;
    expect(elapsed).toBeGreaterThanOrEqual(CONNECT_TIMEOUT_MS - 100);
    expect(elapsed).toBeLessThan(15_000);
    await eventually(() => expect(server.app.io.engine.clientsCount).toBe(0));
    // Not one reached token verification or the database.
    expect(await metric(server, /^chat_handshakes_total\{outcome="ok"\} (\d+)$/m)).toBe(0);
    console.log(
      `[flood] ${IDLE} idle WebSockets from one address: all closed by the server in ${elapsed} ms (connect timeout ${CONNECT_TIMEOUT_MS} ms)`,
    );
  });

  test("per-user limits hold under a flood: the socket cap, the attempt rate, and clients that vanish mid-handshake", async () => {
    const capped = await start({ rateLimits: { maxSocketsPerUser: 5 } });
    const token = await tokenFor("user_cap_flood");
    const burst = await Promise.all(
      Array.from({ length: 100 }, () => clientAttempt(capped, token)),
    );
    expect(tally(burst.map((r) => r.code))).toEqual({ connected: 5, RATE_LIMITED: 95 });
    for (const r of burst.filter((r) => r.code === "RATE_LIMITED")) {
      expect(r.retryAfterMs).toBeGreaterThan(0);
    }
    for (const r of burst) r.socket.disconnect();
    await eventually(() => expect(capped.app.io.engine.clientsCount).toBe(0));

    // Clients that send their CONNECT and vanish before the handshake completes must not keep
    // the user's slots: afterwards the user still gets all five.
    const vanishing = await Promise.all(
      Array.from({ length: 40 }, async () => {
        const raw = new RawSocket(capped.url);
        await raw.connect({ token: await tokenFor("user_vanish") });
        raw.terminate();
      }),
    );
    expect(vanishing).toHaveLength(40);
    await eventually(() => {
      expect(capped.app.io.engine.clientsCount).toBe(0);
      expect(capped.rateLimits.memoryUse().usersWithSockets).toBe(0);
    });
    const fresh = await Promise.all(
      Array.from({ length: 6 }, async () => clientAttempt(capped, await tokenFor("user_vanish"))),
    );
    expect(tally(fresh.map((r) => r.code))).toEqual({ connected: 5, RATE_LIMITED: 1 });

    const rated = await start({ rateLimits: { connectionsPerMinute: 30 } });
    const ratedToken = await tokenFor("user_rate_flood");
    const attempts = await Promise.all(
      Array.from({ length: 100 }, () => clientAttempt(rated, ratedToken)),
    );
    expect(tally(attempts.map((r) => r.code))).toEqual({ connected: 30, RATE_LIMITED: 70 });
  });

  test("the SDK waits for retryAfterMs before it tries a refused handshake again", async () => {
    const server = await start({
      trustProxy: 1,
      rateLimits: { connectionsPerAddressPerMinute: 1, addressWindowSeconds: 2 },
    });
    const headers = { "X-Forwarded-For": "198.51.100.50" };
    expect((await hostileHandshake(server, undefined, headers)).code).toBe("TOKEN_MISSING");
    const refusals = () =>
      metric(server, /^chat_handshakes_total\{outcome="RATE_LIMITED"\} (\d+)$/m);
    const client = createChatClient({
      url: server.url,
      getToken: () => tokenFor("user_sdk_hint"),
      socketOptions: { extraHeaders: headers },
      detectNetwork: false,
    });
    try {
      await eventually(async () => expect(await refusals()).toBe(1));
      expect(client.state).toBe("offline");
      // Its next attempt comes once the window is over (about 2 s), and succeeds: it was not
      // spent on attempts that could only be refused again (a plain backoff retries in ≤ 1 s).
      await eventually(() => expect(client.state).toBe("online"), 8000);
      expect(await refusals()).toBe(1);
    } finally {
      await client.close();
    }
  });

  test("limiter entries expire: a flood from many addresses leaves nothing behind", async () => {
    const server = await start({
      trustProxy: 1,
      rateLimits: { connectionsPerAddressPerMinute: 5, addressWindowSeconds: 2 },
    });
    const limits = server.rateLimits;
    const ADDRESSES = 300;
    let peak = 0;
    const results = await pool(ADDRESSES, 50, async (i) => {
      const r = await hostileHandshake(server, undefined, {
        "X-Forwarded-For": `198.18.${Math.floor(i / 250)}.${(i % 250) + 1}`,
      });
      peak = Math.max(peak, limits.memoryUse().limiterKeys);
      return r;
    });
    expect(results.every((r) => r.code === "TOKEN_MISSING")).toBe(true);
    // One entry per address while its window lasts (some may already have expired by the end
    // of the flood on a busy machine), and none once the windows are over.
    expect(peak).toBeGreaterThan(ADDRESSES / 2);
    await eventually(() => expect(limits.memoryUse().limiterKeys).toBe(0), 6000);
    expect(limits.memoryUse().usersWithSockets).toBe(0);
  });
});

describe("command floods", () => {
  test("every event counts, is answered RATE_LIMITED with retryAfterMs, and a client that slows down stays connected", async () => {
    const server = await start({ rateLimits: { commandsPerSecond: 5, commandBurst: 10 } });
    const socket = await server.connectAs("user_bucket");
    const loose = socket as unknown as { emit(event: string, ...args: unknown[]): void };
    // Ten events without an ack (commands and unknown names) empty the bucket silently.
    for (let i = 0; i < 5; i++) loose.emit("chat:list", {});
    for (let i = 0; i < 5; i++) loose.emit("no:such", {});
    const unknown = await (
      socket as unknown as { emitWithAck(e: string, p: unknown): Promise<unknown> }
    ).emitWithAck("no:such", {});
    expect(unknown).toMatchObject({ ok: false, error: { code: "RATE_LIMITED" } });
    const refused = await socket.emitWithAck("chat:list", {});
    expect(refused.ok).toBe(false);
    if (refused.ok) return;
    expect(refused.error.code).toBe("RATE_LIMITED");
    expect(refused.error.retryAfterMs).toBeGreaterThan(0);
    expect(refused.error.retryAfterMs).toBeLessThanOrEqual(2000);
    // Honouring the hint is enough.
    await new Promise((r) => setTimeout(r, refused.error.retryAfterMs));
    const ok = await socket.emitWithAck("chat:list", {});
    expect(ok.ok).toBe(true);
    expect(socket.connected).toBe(true);
    expect(
      await metric(
        server,
        /^chat_commands_total\{command="\(unknown\)",outcome="RATE_LIMITED"\} (\d+)$/m,
      ),
    ).toBe(1);
  });

  test("a socket that keeps flooding is told COMMAND_FLOOD and disconnected; the user's other sockets are not", async () => {
    const server = await start({ rateLimits: { commandsPerSecond: 5, commandBurst: 10 } });
    const flooding = await server.connectAs("user_flooder");
    const sibling = await server.connectAs("user_flooder");
    const closing = new Promise<ConnectionClosing>((r) => flooding.once("connection:closing", r));
    const disconnected = new Promise<string>((r) => flooding.once("disconnect", r));
    const outcomes: string[] = [];
    for (let i = 0; i < 200; i++) {
      flooding.emit("chat:list", {}, (ack) => outcomes.push(ack.ok ? "ok" : ack.error.code));
    }
    expect(await within(closing, 5000)).toEqual({
      reason: "COMMAND_FLOOD",
      message: expect.any(String),
      reconnect: true,
    });
    expect(await within(disconnected, 5000)).toBe("io server disconnect");
    // A burst was admitted (count them on the server: those still running when the socket was
    // closed were dropped with it, UNAVAILABLE and unanswered, or finished unanswered); a burst
    // more was refused; the rest never ran.
    const admitted = async () =>
      (await metric(server, /^chat_commands_total\{command="chat:list",outcome="ok"\} (\d+)$/m)) +
      (await metric(
        server,
        /^chat_commands_total\{command="chat:list",outcome="UNAVAILABLE"\} (\d+)$/m,
      ));
    await eventually(async () => expect(await admitted()).toBeGreaterThanOrEqual(10));
    expect(await admitted()).toBeLessThan(20);
    const refusals = tally(outcomes).RATE_LIMITED ?? 0;
    expect(refusals).toBeGreaterThanOrEqual(10);
    expect(refusals).toBeLessThan(20);
    expect(sibling.connected).toBe(true);
    expect((await sibling.emitWithAck("user:stats", {})).ok).toBe(true);
  });

  test("many flooding sockets at once: the well-behaved user's commands all succeed, promptly", async () => {
    const server = await start({ rateLimits: { commandsPerSecond: 100, commandBurst: 20 } });
    const good = await wellBehaved(server, "user_good_cmd");
    const FLOODERS = 8;
    const ROUNDS = 8;
    const EMITS = 1000;
    const tokens = await Promise.all(
      Array.from({ length: FLOODERS }, (_, f) =>
        Promise.all(Array.from({ length: ROUNDS }, () => tokenFor(`user_cmd_flood_${f}`))),
      ),
    );
    const before = await heapUsed();
    // The flooders run in a worker thread: hostile clients live elsewhere.
    const worker = new Worker(new URL("./flooder.mjs", import.meta.url), {
      workerData: { url: server.url, tokens, emits: EMITS },
    });
    const flood = new Promise<{ kicked: string[] }>((resolve, reject) => {
      worker.once("message", resolve);
      worker.once("error", reject);
    });
    try {
      const { latencies, failures, floodResult } = await measureDuring(good, flood, {
        intervalMs: 20,
      });
      expect(floodResult).toEqual({ kicked: Array(FLOODERS * ROUNDS).fill("COMMAND_FLOOD") });
      expect(failures).toEqual([]);
      expect(latencies.length).toBeGreaterThanOrEqual(20);
      await eventually(() => expect(server.app.io.engine.clientsCount).toBe(1));
      const after = await heapUsed();
      const { p95 } = report(
        `${FLOODERS} sockets x ${ROUNDS} rounds x ${EMITS} events`,
        latencies,
        { before, after },
      );
      expect(p95).toBeLessThan(P95_BOUND_MS);
      expect(after - before).toBeLessThan(HEAP_GROWTH_BOUND);
    } finally {
      await worker.terminate();
    }
  });
});

describe("oversized frames", () => {
  test("a frame over the limit closes only its own connection; nothing is stored; the server stays up", async () => {
    const server = await start({});
    const good = await wellBehaved(server, "user_good_frames");
    const huge = "x".repeat(600 * 1024); // the limit is 512 KiB

    // socket.io-client, as a buggy or hostile app would use it.
    const sender = await server.connectAs("user_big");
    const created = await sender.emitWithAck("chat:create", {});
    if (!created.ok) throw new Error(created.error.message);
    const gone = new Promise<string>((r) => sender.once("disconnect", r));
    sender.emit(
      "message:send",
      { chatId: created.data.chat.id, clientId: "big", content: huge },
      () => {},
    );
    expect(await within(gone, 5000)).toMatch(/^transport (close|error)$/);

    // Then a hundred bare connections, five at a time, each sending one oversized frame.
    const FRAMES = 100;
    const frame = `42["message:send",{"chatId":"${created.data.chat.id}","clientId":"raw","content":"${huge}"}]`;
    const before = await heapUsed();
    const flood = pool(FRAMES, 5, async (i) => {
      const raw = new RawSocket(server.url);
      await raw.connect({ token: await tokenFor(`user_big_${i % 10}`) });
      await eventually(() => expect(raw.frames.some((f) => f.startsWith("40"))).toBe(true));
      raw.send(frame);
      const closed = await within(raw.closed, 5000);
      return closed === "timeout" ? "timeout" : closed.code;
    });
    const { latencies, failures, floodResult } = await measureDuring(good, flood);
    // 1009: "message too big", decided from the frame header before the payload is buffered.
    expect(floodResult).toEqual(Array(FRAMES).fill(1009));
    expect(failures).toEqual([]);
    expect(latencies.length).toBeGreaterThanOrEqual(20);
    await eventually(() => expect(server.app.io.engine.clientsCount).toBe(1));
    const after = await heapUsed();
    const { p95 } = report(`${FRAMES + 1} oversized frames`, latencies, { before, after });
    expect(p95).toBeLessThan(P95_BOUND_MS);
    expect(after - before).toBeLessThan(HEAP_GROWTH_BOUND);

    expect(good.connected).toBe(true);
    expect((await fetch(`${server.url}/healthz`)).status).toBe(200);
    const again = await server.connectAs("user_big");
    const history = await again.emitWithAck("message:history", { chatId: created.data.chat.id });
    expect(history.ok && history.data.messages).toEqual([]);
  });
});

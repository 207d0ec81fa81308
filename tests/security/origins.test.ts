/**
 * Origins and transport, against a real server: the `Origin` header of every WebSocket handshake
 * is checked at the handshake, and a foreign browser page is refused with connect_error
 * ORIGIN_NOT_ALLOWED before any token is verified; a client without Origin, or with the server's
 * own (python-socketio), is not a foreign page and goes on to token authentication; the
 * production default is the app's own origins, and the server speaks WebSocket only.
 */
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { loadConfig } from "../../server/src/config.js";
import { REFUSED_DEADLINE_MS } from "../../server/src/socket/admission.js";
import {
  type ClientSocket,
  eventually,
  startTestServer,
  type TestServer,
  testKeys,
  tokenFor,
} from "../helpers/server.js";
import { openSql } from "../realtime/support.js";
import { engineUrl, httpRequest, RawSocket, upgradeRequest } from "./hostile.js";

const APP = "https://app.example.com";
const servers: TestServer[] = [];
afterAll(async () => {
  for (const s of servers.reverse()) await s.close();
});

/** socket.io-client over WebSocket with an Origin header: "connected" or the connect_error. */
async function attempt(
  server: TestServer,
  origin: string | undefined,
  userId = "user_origin",
): Promise<{ outcome: "connected" } | { outcome: "refused"; message: string; code?: string }> {
  const s: ClientSocket = server.socket(
    { token: await tokenFor(userId) },
    origin === undefined ? {} : { extraHeaders: { Origin: origin } },
  );
  return new Promise((resolve) => {
    s.once("connect", () => {
      s.disconnect();
      resolve({ outcome: "connected" });
    });
    s.once("connect_error", (e: Error & { data?: { code?: string } }) => {
      s.disconnect();
      resolve({ outcome: "refused", message: e.message, code: e.data?.code });
    });
  });
}

/** Handshakes the Socket.IO middlewares have seen, by outcome, from /metrics. */
async function outcomes(server: TestServer): Promise<Record<string, number>> {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  return Object.fromEntries(
    [...text.matchAll(/^chat_handshakes_total\{outcome="([^"]*)"\} (\d+)$/gm)].map((m) => [
      m[1],
      Number(m[2]),
    ]),
  );
}

/** What changed between two readings of `outcomes` (zero changes left out). */
function diff(before: Record<string, number>, after: Record<string, number>) {
  return Object.fromEntries(
    Object.entries(after)
      .map(([k, v]) => [k, v - (before[k] ?? 0)] as const)
      .filter(([, v]) => v !== 0),
  );
}

/** `promise`, or "timeout" after `ms`: bounds a wait on the server. */
function bounded<T>(promise: Promise<T>, ms: number): Promise<T | "timeout"> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<"timeout">((resolve) => {
      timer = setTimeout(() => resolve("timeout"), ms);
    }),
  ]);
}

const production = loadConfig({
  NODE_ENV: "production",
  CLERK_JWT_KEY: testKeys.publicKeyPem,
  CLERK_AUTHORIZED_PARTIES: `${APP}, https://admin.example.com`,
  DATABASE_URL: "postgres://x@127.0.0.1/db",
});

describe("production default: the app's own origins (CLERK_AUTHORIZED_PARTIES)", () => {
  let server: TestServer;
  beforeAll(async () => {
    expect(production.origins).toEqual({
      allowed: [APP, "https://admin.example.com"],
      loopback: false,
    });
    server = await startTestServer({ origins: production.origins });
    servers.push(server);
  });

  test("an authorized party's page connects", async () => {
    expect(await attempt(server, APP)).toEqual({ outcome: "connected" });
    expect(await attempt(server, "https://admin.example.com")).toEqual({ outcome: "connected" });
  });

  test("any other browser origin gets connect_error ORIGIN_NOT_ALLOWED, before any token is verified or row written, and is closed", async () => {
    const before = await outcomes(server);
    const foreign = [
      "https://evil.example",
      "http://app.example.com", // other scheme
      "https://app.example.com:8443", // other port
      "https://app.example.com.evil.example",
      "http://localhost:3000", // loopback is for development only
      "null", // sandboxed frames, file: pages
    ];
    for (const origin of foreign) {
      // A valid token of a user never seen: had it been verified and the user provisioned,
      // a users row would exist.
      const result = await attempt(
        server,
        origin,
        `user_origin_refused_${foreign.indexOf(origin)}`,
      );
      expect(result, origin).toMatchObject({ outcome: "refused", code: "ORIGIN_NOT_ALLOWED" });

      // A raw client that ignores the refusal is closed by the server right after it.
      const raw = new RawSocket(server.url, { headers: { Origin: origin } });
      await raw.connect({ token: "not-a-token" });
      expect(await bounded(raw.closed, 5000), origin).not.toBe("timeout");
      expect(raw.connectError(), origin).toEqual({
        message: "Origin not allowed",
        data: { code: "ORIGIN_NOT_ALLOWED" },
      });
    }
    // Only the admission middleware ran: no token was verified (the garbage token would have
    // been TOKEN_INVALID), no handshake got further, and no users row was written.
    expect(diff(before, await outcomes(server))).toEqual({
      ORIGIN_NOT_ALLOWED: foreign.length * 2,
    });
    const sql = openSql(server.databaseUrl);
    try {
      const rows = await sql`select 1 from users where clerk_id like 'user_origin_refused_%'`;
      expect(rows.length).toBe(0);
    } finally {
      await sql.end({ timeout: 5 });
    }
    await eventually(() => expect(server.app.io.engine.clientsCount).toBe(0));
  });

  test("a refused origin that never sends CONNECT is closed within the refusal deadline", async () => {
    const started = Date.now();
    const raw = new RawSocket(server.url, { headers: { Origin: "https://evil.example" } });
    await raw.opened;
    expect(await bounded(raw.closed, REFUSED_DEADLINE_MS + 5000)).not.toBe("timeout");
    expect(Date.now() - started).toBeGreaterThanOrEqual(REFUSED_DEADLINE_MS - 100);
  });

  test("the server's own origin is allowed (same-origin: python-socketio sends Origin http://<host>:<port>)", async () => {
    const host = `127.0.0.1:${server.port}`;
    for (const origin of [`http://${host}`, `https://${host}`, `HTTP://${host}`]) {
      const raw = new RawSocket(server.url, { headers: { Origin: origin } });
      await raw.connect({ token: await tokenFor("user_same_origin") });
      await eventually(() => expect(raw.frames.some((f) => f.startsWith("40{"))).toBe(true));
      expect(raw.connectError(), origin).toBeUndefined();
      raw.terminate();
    }
    // Another port or host of the same machine is another origin.
    for (const origin of [
      `http://127.0.0.1:${server.port + 1}`,
      `http://localhost:${server.port}`,
    ]) {
      const result = await attempt(server, origin);
      expect(result, origin).toMatchObject({ outcome: "refused", code: "ORIGIN_NOT_ALLOWED" });
    }
  });

  test("a client without Origin is not a browser: it is let through to token authentication", async () => {
    expect(await attempt(server, undefined)).toEqual({ outcome: "connected" });
    const s = server.socket({ token: "not-a-token" });
    const err = await new Promise<Error & { data?: { code?: string } }>((resolve) =>
      s.once("connect_error", resolve),
    );
    expect(err.data?.code).toBe("TOKEN_INVALID");
  });

  test("CORS_ORIGINS, when set, replaces the default list", () => {
    const c = loadConfig({
      NODE_ENV: "production",
      CLERK_JWT_KEY: testKeys.publicKeyPem,
      CLERK_AUTHORIZED_PARTIES: APP,
      CORS_ORIGINS: "https://web.example.com, https://APP.example.com:443/",
      DATABASE_URL: "postgres://x@127.0.0.1/db",
    });
    expect(c.origins).toEqual({
      allowed: ["https://web.example.com", "https://app.example.com"],
      loopback: false,
    });
  });
});

describe("development default: any loopback origin", () => {
  let server: TestServer;
  beforeAll(async () => {
    const dev = loadConfig({});
    expect(dev.origins).toEqual({ allowed: [], loopback: true });
    server = await startTestServer({ origins: dev.origins, devTokens: true });
    servers.push(server);
  });

  test("a page on a local dev server (Vite) may call /dev/token and /healthz across origins; azp is its origin", async () => {
    const VITE = "http://localhost:5173";
    const preflight = await httpRequest(`${server.url}/dev/token`, {
      method: "OPTIONS",
      headers: {
        Origin: VITE,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
      },
    });
    expect(preflight.status).toBe(204);
    expect(preflight.headers["access-control-allow-origin"]).toBe(VITE);
    expect(preflight.headers["access-control-allow-credentials"]).toBeUndefined();

    const azp = async (headers: Record<string, string>) => {
      const res = await fetch(`${server.url}/dev/token`, {
        method: "POST",
        headers: { "content-type": "application/json", ...headers },
        body: JSON.stringify({ userId: "user_vite" }),
      });
      expect(res.status).toBe(200);
      const { token } = (await res.json()) as { token: string };
      const claims = JSON.parse(Buffer.from(token.split(".")[1] ?? "", "base64url").toString()) as {
        azp: string;
        sub: string;
      };
      expect(claims.sub).toBe("user_vite");
      return { azp: claims.azp, allowOrigin: res.headers.get("access-control-allow-origin") };
    };
    expect(await azp({ Origin: VITE })).toEqual({ azp: VITE, allowOrigin: VITE });
    // No Origin (a script, a native app): the server's own origin, with the port it listens on.
    expect((await azp({})).azp).toBe(new URL(server.url).origin);
    // A foreign page gets no CORS header (the browser hides the answer) and not its origin as azp.
    const foreign = await azp({ Origin: "https://evil.example" });
    expect(foreign.allowOrigin).toBeNull();
    expect(foreign.azp).toBe(new URL(server.url).origin);

    const health = await httpRequest(`${server.url}/healthz`, { headers: { Origin: VITE } });
    expect(health.status).toBe(200);
    expect(health.headers["access-control-allow-origin"]).toBe(VITE);
    // Routes that servers call get no CORS at all.
    const metrics = await httpRequest(`${server.url}/metrics`, { headers: { Origin: VITE } });
    expect(metrics.status).toBe(200);
    expect(metrics.headers["access-control-allow-origin"]).toBeUndefined();
  });

  test("the dev server's own page and local front-ends connect; other sites do not", async () => {
    for (const origin of [
      server.url,
      "http://localhost:5173",
      "http://127.0.0.1:3000",
      "http://[::1]:8080",
    ]) {
      expect(await attempt(server, origin), origin).toEqual({ outcome: "connected" });
    }
    for (const origin of ["https://evil.example", "http://localhost.evil.example", "null"]) {
      expect(await attempt(server, origin), origin).toMatchObject({ outcome: "refused" });
    }
  });
});

describe("transport: WebSocket only", () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer({ origins: { allowed: [APP], loopback: false } });
    servers.push(server);
  });

  const polling = (server: TestServer) => `${server.url}/socket.io/?EIO=4&transport=polling`;

  test("a long-polling handshake is refused, whatever its origin", async () => {
    const cases: Record<string, string>[] = [
      {},
      { Origin: APP },
      { Origin: "https://evil.example" },
    ];
    for (const headers of cases) {
      const res = await httpRequest(polling(server), { headers });
      expect(res.status).toBe(400);
      expect(JSON.parse(res.body)).toEqual({ code: 0, message: "Transport unknown" });
    }
    expect(server.app.io.engine.clientsCount).toBe(0);
  });

  test("CORS answers follow the same origins, without credentials", async () => {
    const preflight = (origin: string) =>
      httpRequest(polling(server), {
        method: "OPTIONS",
        headers: { Origin: origin, "Access-Control-Request-Method": "GET" },
      });
    const allowed = await preflight(APP);
    expect(allowed.status).toBe(204);
    expect(allowed.headers["access-control-allow-origin"]).toBe(APP);
    expect(allowed.headers["access-control-allow-credentials"]).toBeUndefined();
    const foreign = await preflight("https://evil.example");
    expect(foreign.headers["access-control-allow-origin"]).toBeUndefined();
    const get = await httpRequest(polling(server), { headers: { Origin: "https://evil.example" } });
    expect(get.headers["access-control-allow-origin"]).toBeUndefined();
  });

  test("socket.io-client's default (polling first) cannot connect; WebSocket can", async () => {
    const s = server.socket(
      { token: await tokenFor("user_transport") },
      {
        transports: ["polling", "websocket"],
      },
    );
    const err = await new Promise<Error>((resolve) => s.once("connect_error", resolve));
    expect(err.message).toBe("xhr poll error");
    expect((await attempt(server, undefined, "user_transport")).outcome).toBe("connected");
  });

  test("a WebSocket request naming an existing session is refused; that session is unharmed", async () => {
    const victim = await server.connectAs("user_victim");
    const sid = victim.io.engine.id;
    expect(sid).toBeTruthy();
    // A session id in the query is how a transport joins a session (polling, upgrades): never
    // legitimate with WebSocket only, and it would skip the handshake checks.
    const raw = await upgradeRequest(
      `${engineUrl(server.url).replace(/^ws/, "http")}&sid=${encodeURIComponent(sid ?? "")}`,
      { Origin: APP },
    );
    // (Engine.IO would otherwise answer 101 and start moving the session onto this socket.)
    expect(raw).toMatchObject({ status: 400, body: "Bad request" });
    expect(victim.connected).toBe(true);
    const ack = await victim.emitWithAck("user:stats", {});
    expect(ack.ok).toBe(true);
  });
});

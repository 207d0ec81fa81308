/**
 * Origins and transport, against a real server: the `Origin` header of every WebSocket handshake
 * is checked before any Socket.IO code runs (a foreign browser page is refused, a client without
 * Origin is not a browser and goes on to token authentication), the production default is the
 * app's own origins, and the server speaks WebSocket only.
 */
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { loadConfig } from "../../server/src/config.js";
import {
  type ClientSocket,
  startTestServer,
  type TestServer,
  testKeys,
  tokenFor,
} from "../helpers/server.js";
import { engineUrl, httpRequest, upgradeRequest } from "./hostile.js";

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

/** Handshakes (of any kind) the Socket.IO middlewares have seen, from /metrics. */
async function handshakesSeen(server: TestServer): Promise<number> {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  return [...text.matchAll(/^chat_handshakes_total\{[^}]*\} (\d+)$/gm)].reduce(
    (sum, m) => sum + Number(m[1]),
    0,
  );
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

  test("any other browser origin is refused at the WebSocket handshake, before Socket.IO runs", async () => {
    const before = await handshakesSeen(server);
    for (const origin of [
      "https://evil.example",
      "http://app.example.com", // other scheme
      "https://app.example.com:8443", // other port
      "https://app.example.com.evil.example",
      "http://localhost:3000", // loopback is for development only
      "null", // sandboxed frames, file: pages
    ]) {
      const result = await attempt(server, origin);
      // socket.io-client only learns that the WebSocket failed: there is no Socket.IO session.
      expect(result, origin).toMatchObject({ outcome: "refused", message: "websocket error" });
      const raw = await upgradeRequest(engineUrl(server.url).replace(/^ws/, "http"), {
        Origin: origin,
      });
      expect(raw, origin).toMatchObject({ status: 400, body: "Origin not allowed" });
    }
    // No middleware ran: no token was verified and no handshake was counted.
    expect(await handshakesSeen(server)).toBe(before);
    expect(server.app.io.engine.clientsCount).toBe(0);
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
    server = await startTestServer({ origins: dev.origins });
    servers.push(server);
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

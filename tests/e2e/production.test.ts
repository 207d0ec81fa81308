/**
 * `npm start` in production mode, as a real process: accepts Clerk-shaped RS256 session tokens
 * signed with the configured key and rejects every other kind; no development routes.
 */
import { createHmac, generateKeyPairSync } from "node:crypto";
import { io } from "socket.io-client";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { mintSessionToken } from "../../server/src/auth/dev-keys.js";
import { createTestDatabase, type TestDatabase } from "../helpers/db.js";
import { AUTHORIZED_PARTY, testKeys, tokenFor } from "../helpers/server.js";
import { type ServerProcess, startServerProcess } from "../helpers/server-process.js";

let node: ServerProcess;
let tdb: TestDatabase;
let url: string;

beforeAll(async () => {
  tdb = await createTestDatabase();
  node = await startServerProcess({
    env: {
      NODE_ENV: "production",
      HOST: "127.0.0.1",
      DATABASE_URL: tdb.url,
      CLERK_JWT_KEY: testKeys.publicKeyPem,
      CLERK_AUTHORIZED_PARTIES: AUTHORIZED_PARTY,
      LOG_LEVEL: "info",
    },
  });
  url = node.url;
});

afterAll(async () => {
  await node?.stop();
  await tdb?.drop();
});

/** Connects (as a browser page of `origin`, if given) and resolves "connected" or the error. */
function attempt(token: string, origin?: string): Promise<string> {
  return new Promise((resolve) => {
    const s = io(url, {
      auth: { token },
      transports: ["websocket"],
      reconnection: false,
      ...(origin ? { extraHeaders: { Origin: origin } } : {}),
    });
    s.once("connect", () => {
      s.close();
      resolve("connected");
    });
    s.once("connect_error", (e: Error & { data?: { code?: string } }) => {
      s.close();
      resolve(e.data?.code ?? e.message);
    });
  });
}

function b64url(x: unknown): string {
  return Buffer.from(JSON.stringify(x)).toString("base64url");
}

describe("production mode", () => {
  test("accepts a genuine Clerk-shaped RS256 session token", async () => {
    expect(await attempt(await tokenFor("user_prod"))).toBe("connected");
  });

  test("rejects every other kind of token", async () => {
    const other = generateKeyPairSync("rsa", {
      modulusLength: 2048,
      privateKeyEncoding: { type: "pkcs8", format: "pem" },
      publicKeyEncoding: { type: "spki", format: "pem" },
    });
    const now = Math.floor(Date.now() / 1000);
    const claims = {
      sub: "user_prod",
      azp: AUTHORIZED_PARTY,
      iat: now,
      nbf: now - 5,
      exp: now + 60,
    };
    const hs256 = `${b64url({ alg: "HS256", typ: "JWT" })}.${b64url(claims)}`;
    const hsSig = createHmac("sha256", testKeys.publicKeyPem).update(hs256).digest("base64url");
    const none = `${b64url({ alg: "none", typ: "JWT" })}.${b64url(claims)}.`;

    expect(
      await attempt(
        await mintSessionToken(other.privateKey, "user_prod", {
          authorizedParty: AUTHORIZED_PARTY,
        }),
      ),
    ).toBe("TOKEN_INVALID");
    expect(await attempt(`${hs256}.${hsSig}`)).toBe("TOKEN_INVALID");
    expect(await attempt(none)).toBe("TOKEN_INVALID");
    expect(await attempt("garbage")).toBe("TOKEN_INVALID");
    expect(await attempt("")).toBe("TOKEN_MISSING");
    expect(
      await attempt(await tokenFor("user_prod", { claims: { exp: now - 120, nbf: now - 300 } })),
    ).toBe("TOKEN_EXPIRED");
    expect(
      await attempt(await tokenFor("user_prod", { authorizedParty: "https://evil.example" })),
    ).toBe("TOKEN_WRONG_PARTY");
    expect(await attempt(await tokenFor("user_prod", { claims: { nbf: now + 600 } }))).toBe(
      "TOKEN_INVALID",
    );
  });

  test("with no CORS_ORIGINS, only the authorized parties' pages and the server's own origin may connect", async () => {
    const token = await tokenFor("user_prod");
    expect(await attempt(token, AUTHORIZED_PARTY)).toBe("connected");
    expect(await attempt(token, "https://evil.example")).toBe("ORIGIN_NOT_ALLOWED");
    expect(await attempt(token, "http://127.0.0.1:3000")).toBe("ORIGIN_NOT_ALLOWED");
    // What python-socketio sends: its own idea of the server's origin (same-origin rule).
    expect(await attempt(token, new URL(url).origin)).toBe("connected");
  });

  test("has no development token route", async () => {
    const res = await fetch(`${url}/dev/token`, {
      method: "POST",
      body: JSON.stringify({ userId: "x" }),
    });
    expect(res.status).toBe(404);
    expect((await fetch(`${url}/healthz`)).status).toBe(200);
    expect((await fetch(`${url}/readyz`)).status).toBe(200);
  });
});

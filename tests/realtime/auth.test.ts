/**
 * The handshake (Clerk session tokens through auth.token or an Authorization header), user
 * provisioning, token expiry on an open socket and in-band refresh (`auth:refresh`).
 * Run on the in-memory adapter and on Redis (sharded adapter): there the socket cap, the
 * connection limits and the revocations are the Redis stores, and a disconnect travels through
 * the adapter.
 */
import { createHmac, generateKeyPairSync } from "node:crypto";
import type postgres from "postgres";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { ConnectErrorCode, DisconnectReason, ErrorCode } from "../../protocol/index.js";
import { mintSessionToken } from "../../server/src/auth/dev-keys.js";
import { adapterBackends } from "../helpers/backends.js";
import {
  AUTHORIZED_PARTY,
  type ClientSocket,
  eventually,
  recordEvents,
  startTestServer,
  type TestServer,
  testKeys,
  tokenFor,
} from "../helpers/server.js";
import {
  claimsOf,
  command,
  disconnected,
  nextEvent,
  ok,
  openSql,
  refused,
  userId,
} from "./support.js";

/** A second RSA key the server does not know: its signatures must be refused. */
const otherKey = generateKeyPairSync("rsa", {
  modulusLength: 2048,
  publicKeyEncoding: { type: "spki", format: "pem" },
  privateKeyEncoding: { type: "pkcs8", format: "pem" },
});

/** Seconds a socket may outlive its token on this file's server. */
const GRACE_SECONDS = 1;

describe.each(adapterBackends)("on the $name adapter", (adapter) => {
  let server: TestServer;
  let sql: postgres.Sql;

  beforeAll(async () => {
    server = await startTestServer({ ...adapter.options(), tokenGraceSeconds: GRACE_SECONDS });
    sql = openSql(server.databaseUrl);
  });
  afterAll(async () => {
    await sql?.end({ timeout: 5 });
    await server?.close();
  });

  type ConnectError = Error & { data?: { code?: string } };

  /** Waits for the handshake of `s` to be refused and returns the error. */
  function refusal(s: ClientSocket): Promise<ConnectError> {
    return new Promise((resolve, reject) => {
      s.once("connect", () => reject(new Error("the handshake was accepted")));
      s.once("connect_error", (err) => resolve(err as ConnectError));
    });
  }

  /** Waits for the handshake of `s` to be accepted. */
  function accepted(s: ClientSocket): Promise<void> {
    return new Promise((resolve, reject) => {
      s.once("connect", () => resolve());
      s.once("connect_error", (err) =>
        reject(new Error(`refused: ${err.message} ${JSON.stringify((err as ConnectError).data)}`)),
      );
    });
  }

  async function usersRows(clerkId: string): Promise<number> {
    const [row] = await sql<{ n: number }[]>`
    select count(*)::int as n from users where clerk_id = ${clerkId}`;
    return row?.n ?? -1;
  }

  /** A JWT with the given header, claims and signature (no key involved). */
  function handmadeJwt(
    header: Record<string, unknown>,
    claims: Record<string, unknown>,
    sign: (input: string) => string,
  ): string {
    const enc = (o: unknown) => Buffer.from(JSON.stringify(o)).toString("base64url");
    const input = `${enc(header)}.${enc(claims)}`;
    return `${input}.${sign(input)}`;
  }

  function validClaims(sub: string): Record<string, unknown> {
    const now = Math.floor(Date.now() / 1000);
    return {
      sub,
      sid: "sess_handmade",
      iss: "https://dev.clerk.local",
      azp: AUTHORIZED_PARTY,
      nbf: now - 5,
      exp: now + 60,
      v: 2,
    };
  }

  describe("handshake", () => {
    test("a token in auth.token is accepted and the socket can run commands", async () => {
      const id = userId("authtoken");
      const s = await server.connectAs(id);
      expect(s.connected).toBe(true);
      const { stats } = await ok(s, "user:stats", {});
      expect(stats).toEqual({
        totalConversations: 0,
        totalSearches: 0,
        messageCount: 0,
        tokenUsage: 0,
        subscriptionTier: "free",
        subscriptionStatus: "active",
      });
    });

    test("a token in an Authorization: Bearer header is accepted (any case of 'Bearer')", async () => {
      for (const scheme of ["Bearer", "bearer"]) {
        const id = userId("header");
        const token = await tokenFor(id);
        const s = server.socket(undefined, {
          extraHeaders: { Authorization: `${scheme} ${token}` },
        });
        await accepted(s);
        const { chat } = await ok(s, "chat:create", { title: `via ${scheme}` });
        expect(chat.title).toBe(`via ${scheme}`);
        // The chat belongs to the user named by the header's token.
        const [row] = await sql<{ clerk_id: string }[]>`
        select u.clerk_id from chat_sessions c join users u on u.id = c.user_id
         where c.id = ${chat.id}`;
        expect(row?.clerk_id).toBe(id);
        s.disconnect();
      }
    });

    test.each([
      ["no auth at all", undefined, undefined],
      ["an empty auth object", {}, undefined],
      ["an empty token", { token: "" }, undefined],
      ["a token that is not a string", { token: 12345 }, undefined],
      ["a non-Bearer Authorization header", undefined, "Basic dXNlcjpwYXNz"],
      ["a Bearer header without a token", undefined, "Bearer "],
    ])("%s is refused with TOKEN_MISSING", async (_label, auth, header) => {
      const s = server.socket(
        auth,
        header === undefined ? {} : { extraHeaders: { Authorization: header } },
      );
      const err = await refusal(s);
      expect(err.data).toEqual({ code: ConnectErrorCode.TOKEN_MISSING });
      expect(err.message).toBe("No token was sent");
      expect(s.connected).toBe(false);
    });

    test("an expired token is refused with TOKEN_EXPIRED and provisions nobody", async () => {
      const id = userId("expired");
      const now = Math.floor(Date.now() / 1000);
      const token = await tokenFor(id, { claims: { exp: now - 120, nbf: now - 180 } });
      // Each socket is made just before its refusal is awaited, so the listener is in place
      // before its connect_error can arrive.
      for (const make of [
        () => server.socket({ token }),
        () => server.socket(undefined, { extraHeaders: { Authorization: `Bearer ${token}` } }),
      ]) {
        const err = await refusal(make());
        expect(err.data).toEqual({ code: ConnectErrorCode.TOKEN_EXPIRED });
        expect(err.message).toBe("Token has expired");
      }
      expect(await usersRows(id)).toBe(0);
    });

    test("a token of another application (azp) is refused with TOKEN_WRONG_PARTY", async () => {
      const id = userId("azp");
      const token = await tokenFor(id, { authorizedParty: "https://evil.example.com" });
      const err = await refusal(server.socket({ token }));
      expect(err.data).toEqual({ code: ConnectErrorCode.TOKEN_WRONG_PARTY });
      expect(err.message).toBe("Token was issued for another application (azp)");
      expect(await usersRows(id)).toBe(0);
    });

    describe("invalid tokens are refused with TOKEN_INVALID and provision nobody", () => {
      const cases: [string, (sub: string) => Promise<string>][] = [
        ["garbage", async () => "garbage"],
        ["three garbage segments", async () => "aaa.bbb.ccc"],
        [
          "signed with another RSA key",
          (sub) =>
            mintSessionToken(otherKey.privateKey, sub, { authorizedParty: AUTHORIZED_PARTY }),
        ],
        [
          "HS256 with the server's public key as the HMAC secret (algorithm confusion)",
          async (sub) => {
            // The public key is public: a server that honoured alg=HS256 would accept this.
            return handmadeJwt(
              { alg: "HS256", typ: "JWT", kid: "ins_dev" },
              validClaims(sub),
              (i) => createHmac("sha256", testKeys.publicKeyPem).update(i).digest("base64url"),
            );
          },
        ],
        [
          "alg none without a signature",
          async (sub) =>
            handmadeJwt({ alg: "none", typ: "JWT", kid: "ins_dev" }, validClaims(sub), () => ""),
        ],
        [
          "a validly signed token whose claims were altered",
          async (sub) => {
            const real = await tokenFor(`${sub}_original`);
            const [h, , sig] = real.split(".");
            const forged = Buffer.from(JSON.stringify(validClaims(sub))).toString("base64url");
            return `${h}.${forged}.${sig}`;
          },
        ],
        [
          "not valid yet (nbf in the future)",
          (sub) => {
            const now = Math.floor(Date.now() / 1000);
            return tokenFor(sub, { claims: { nbf: now + 600, exp: now + 900 } });
          },
        ],
        ["without a subject", (sub) => tokenFor(sub, { claims: { sub: undefined } })],
        ["with an empty subject", (sub) => tokenFor(sub, { claims: { sub: "" } })],
        [
          "longer than 16384 characters",
          (sub) => tokenFor(sub, { claims: { padding: "x".repeat(17_000) } }),
        ],
      ];

      test.each(cases)("%s", async (_label, make) => {
        const id = userId("invalid");
        const token = await make(id);
        const err = await refusal(server.socket({ token }));
        expect(err.data).toEqual({ code: ConnectErrorCode.TOKEN_INVALID });
        expect(typeof err.message).toBe("string");
        expect(err.message.length).toBeGreaterThan(0);
        expect(await usersRows(id)).toBe(0);
      });
    });

    test("the first connection creates the users row; a later one updates last_seen_at", async () => {
      const id = userId("provision");
      expect(await usersRows(id)).toBe(0);

      const first = await server.connectAs(id);
      const rowOf = async () => {
        const [row] = await sql<
          {
            id: string;
            seen_us: string;
            created_us: string;
            message_count: number;
            total_conversations: number;
            total_searches: number;
          }[]
        >`
        select id, message_count, total_conversations, total_searches,
               (extract(epoch from last_seen_at) * 1000000)::bigint::text as seen_us,
               (extract(epoch from created_at) * 1000000)::bigint::text as created_us
          from users where clerk_id = ${id}`;
        if (!row) throw new Error("no users row");
        return row;
      };
      const r1 = await rowOf();
      expect(r1).toMatchObject({ message_count: 0, total_conversations: 0, total_searches: 0 });
      expect(BigInt(r1.seen_us)).toBeGreaterThanOrEqual(BigInt(r1.created_us));
      first.disconnect();

      // A known user's reconnect does not wait for the database: last_seen_at is written by the
      // next coalesced flush (about a second), so poll for it.
      const second = await server.connectAs(id);
      await expect
        .poll(async () => BigInt((await rowOf()).seen_us) > BigInt(r1.seen_us), { timeout: 5000 })
        .toBe(true);
      const r2 = await rowOf();
      expect(r2.id).toBe(r1.id);
      expect(r2.created_us).toBe(r1.created_us);
      expect(await usersRows(id)).toBe(1);
      second.disconnect();
    });

    test("simultaneous first connections of one user create exactly one users row", async () => {
      const id = userId("burst");
      const sockets = await Promise.all(Array.from({ length: 8 }, () => server.connectAs(id)));
      expect(sockets.every((s) => s.connected)).toBe(true);
      expect(await usersRows(id)).toBe(1);
      // All of them act as the same user: a chat made on one is listed on another.
      const [a, b] = sockets as [ClientSocket, ClientSocket];
      const { chat } = await ok(a, "chat:create", { title: "shared" });
      const { chats } = await ok(b, "chat:list", {});
      expect(chats.map((c) => c.id)).toEqual([chat.id]);
      for (const s of sockets) s.disconnect();
    });
  });

  // Each of these waits a few seconds for a token to expire: they run side by side.
  describe.concurrent("token expiry and auth:refresh", () => {
    /** Connects with a token that expires in about 3 s and returns the socket and its `exp` (ms). */
    async function shortLived(id: string) {
      const token = await tokenFor(id, { ttlSeconds: 3 });
      const expMs = claimsOf(token).exp * 1000;
      const s = server.socket({ token });
      await accepted(s);
      return { s, expMs, events: recordEvents(s) };
    }

    test("without a refresh the socket gets connection:closing TOKEN_EXPIRED and is disconnected after exp + grace", async () => {
      const id = userId("noreful");
      const { s, expMs, events } = await shortLived(id);
      expect((await ok(s, "user:stats", {})).stats.messageCount).toBe(0);

      const closing = nextEvent(s, "connection:closing", () => true, 15_000);
      const gone = disconnected(s, 15_000);

      // Between exp and exp + grace the socket is still open but commands are refused.
      const expiredError = await eventually(async () => {
        const ack = await command(s, "chat:list", {});
        if (ack.ok) throw new Error("still accepted");
        return ack.error;
      }, 10_000);
      expect(Date.now()).toBeGreaterThanOrEqual(expMs);
      expect(expiredError.code).toBe(ErrorCode.TOKEN_EXPIRED);
      // Validation happens after the expiry check, and auth:refresh stays available.
      expect((await refused(s, "chat:create", { title: 5 })).code).toBe(ErrorCode.TOKEN_EXPIRED);

      const event = await closing;
      const closedAt = Date.now();
      expect(event).toEqual({
        reason: DisconnectReason.TOKEN_EXPIRED,
        message: expect.any(String),
        reconnect: true,
      });
      expect(closedAt).toBeGreaterThanOrEqual(expMs + GRACE_SECONDS * 1000);
      expect(closedAt).toBeLessThan(expMs + GRACE_SECONDS * 1000 + 3000);
      expect(await gone).toBe("io server disconnect");
      expect(events.of("connection:closing")).toHaveLength(1);
      expect(s.connected).toBe(false);
    });

    test("a refresh before expiry keeps the socket open past the original expiry", async () => {
      const id = userId("refresh");
      const { s, expMs, events } = await shortLived(id);
      // A control socket of the same user with the same lifetime, never refreshed.
      const control = await shortLived(id);
      const controlClosing = nextEvent(control.s, "connection:closing", () => true, 15_000);
      const controlGone = disconnected(control.s, 15_000);

      const fresh = await tokenFor(id, { ttlSeconds: 120 });
      const refreshed = await ok(s, "auth:refresh", { token: fresh });
      expect(Date.now()).toBeLessThan(expMs);
      expect(refreshed).toEqual({
        userId: id,
        expiresAt: new Date(claimsOf(fresh).exp * 1000).toISOString(),
      });

      // The control socket is cut off at its expiry plus grace ...
      expect((await controlClosing).reason).toBe(DisconnectReason.TOKEN_EXPIRED);
      expect(await controlGone).toBe("io server disconnect");
      expect(Date.now()).toBeGreaterThanOrEqual(control.expMs + GRACE_SECONDS * 1000);

      // ... and the refreshed one is still open and working after that point.
      await eventually(() => {
        if (Date.now() < expMs + GRACE_SECONDS * 1000 + 300) throw new Error("not yet");
      }, 10_000);
      expect(s.connected).toBe(true);
      const { chat } = await ok(s, "chat:create", { title: "after the old expiry" });
      expect(chat.title).toBe("after the old expiry");
      expect(events.of("connection:closing")).toEqual([]);
      s.disconnect();
    });

    test("a refresh after expiry but within the grace period revives the socket", async () => {
      const id = userId("revive");
      const { s, expMs, events } = await shortLived(id);
      await eventually(async () => {
        const ack = await command(s, "user:stats", {});
        if (ack.ok) throw new Error("still accepted");
        expect(ack.error.code).toBe(ErrorCode.TOKEN_EXPIRED);
      }, 10_000);

      const fresh = await tokenFor(id, { ttlSeconds: 120 });
      const refreshed = await ok(s, "auth:refresh", { token: fresh });
      expect(refreshed.userId).toBe(id);
      expect((await ok(s, "user:stats", {})).stats.totalConversations).toBe(0);

      await eventually(() => {
        if (Date.now() < expMs + GRACE_SECONDS * 1000 + 300) throw new Error("not yet");
      }, 10_000);
      expect(s.connected).toBe(true);
      expect((await ok(s, "chat:list", {})).chats).toEqual([]);
      expect(events.of("connection:closing")).toEqual([]);
      s.disconnect();
    });

    test("refused refreshes (another user, invalid, expired, wrong party, empty) do not extend the socket", async () => {
      const id = userId("badrefresh");
      const { s, expMs } = await shortLived(id);
      const closing = nextEvent(s, "connection:closing", () => true, 15_000);
      const gone = disconnected(s, 15_000);

      const other = await tokenFor(userId("someoneelse"), { ttlSeconds: 120 });
      const forbidden = await refused(s, "auth:refresh", { token: other });
      expect(forbidden.code).toBe(ErrorCode.FORBIDDEN);

      expect((await refused(s, "auth:refresh", { token: "garbage" })).code).toBe(
        ErrorCode.UNAUTHORIZED,
      );
      const badSignature = await mintSessionToken(otherKey.privateKey, id, {
        authorizedParty: AUTHORIZED_PARTY,
        ttlSeconds: 120,
      });
      expect((await refused(s, "auth:refresh", { token: badSignature })).code).toBe(
        ErrorCode.UNAUTHORIZED,
      );
      const wrongParty = await tokenFor(id, { authorizedParty: "https://evil.example.com" });
      expect((await refused(s, "auth:refresh", { token: wrongParty })).code).toBe(
        ErrorCode.UNAUTHORIZED,
      );
      const now = Math.floor(Date.now() / 1000);
      const expired = await tokenFor(id, { claims: { exp: now - 120, nbf: now - 180 } });
      expect((await refused(s, "auth:refresh", { token: expired })).code).toBe(
        ErrorCode.TOKEN_EXPIRED,
      );
      const empty = await refused(s, "auth:refresh", { token: "" });
      expect(empty.code).toBe(ErrorCode.INVALID_PAYLOAD);
      expect(empty.details?.map((d) => d.path)).toEqual(["token"]);
      expect(Date.now()).toBeLessThan(expMs);

      const event = await closing;
      expect(event.reason).toBe(DisconnectReason.TOKEN_EXPIRED);
      expect(event.reconnect).toBe(true);
      expect(Date.now()).toBeGreaterThanOrEqual(expMs + GRACE_SECONDS * 1000);
      expect(await gone).toBe("io server disconnect");
    });

    test("a user whose socket expired can reconnect with a fresh token", async () => {
      const id = userId("reconnect");
      const { s } = await shortLived(id);
      const gone = disconnected(s, 15_000);
      const { chat } = await ok(s, "chat:create", { title: "before expiry" });
      await nextEvent(s, "connection:closing", () => true, 15_000);
      expect(await gone).toBe("io server disconnect");

      const again = await server.connectAs(id);
      const { chats } = await ok(again, "chat:list", {});
      expect(chats.map((c) => [c.id, c.title])).toEqual([[chat.id, "before expiry"]]);
      again.disconnect();
    });
  });
});

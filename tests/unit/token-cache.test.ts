/**
 * The verified-token cache of the Clerk verifier: a reconnect with a token this node verified
 * already skips the RSA work, and nothing else changes: expired entries are never used,
 * refusals are never remembered, and the cache is bounded. Tokens are signed with a local key
 * and verified through @clerk/backend's real verifyToken.
 */
import { describe, expect, test } from "vitest";
import { mintSessionToken } from "../../server/src/auth/dev-keys.js";
import {
  createClerkVerifier,
  TokenError,
  VerifiedTokenCache,
} from "../../server/src/auth/token-verifier.js";
import { AUTHORIZED_PARTY, testKeys } from "../helpers/server.js";

const options = { jwtKey: testKeys.publicKeyPem, authorizedParties: [AUTHORIZED_PARTY] };
const mint = (userId: string, ttlSeconds = 60) =>
  mintSessionToken(testKeys.privateKeyPem, userId, {
    authorizedParty: AUTHORIZED_PARTY,
    ttlSeconds,
  });

async function refusal(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (e) {
    if (e instanceof TokenError) return e.code;
    throw e;
  }
  throw new Error("the token was accepted");
}

describe("verified-token cache", () => {
  test("a token verified once is remembered with its claims, and served from memory", async () => {
    const cache = new VerifiedTokenCache();
    const verifier = createClerkVerifier(options, cache);
    const token = await mint("user_cache_hit");
    const first = await verifier.verify(token);
    expect(first).toMatchObject({ userId: "user_cache_hit" });
    expect(cache.size).toBe(1);
    const second = await verifier.verify(token);
    // The same frozen object: it came from the cache, not from a second verification.
    expect(second).toBe(first);
    expect(Object.isFrozen(second)).toBe(true);
  });

  test("refusals are not remembered: a bad, a foreign-party and an expired token", async () => {
    const cache = new VerifiedTokenCache();
    const verifier = createClerkVerifier(options, cache);
    const good = await mint("user_cache_bad");
    const [header, payload] = good.split(".");
    expect(await refusal(verifier.verify(`${header}.${payload}.AAAA`))).toBe("TOKEN_INVALID");
    const foreign = await mintSessionToken(testKeys.privateKeyPem, "user_cache_bad", {
      authorizedParty: "https://evil.example.com",
    });
    expect(await refusal(verifier.verify(foreign))).toBe("TOKEN_WRONG_PARTY");
    const now = Math.floor(Date.now() / 1000);
    const expired = await mintSessionToken(testKeys.privateKeyPem, "user_cache_bad", {
      authorizedParty: AUTHORIZED_PARTY,
      claims: { exp: now - 120, nbf: now - 180 },
    });
    expect(await refusal(verifier.verify(expired))).toBe("TOKEN_EXPIRED");
    expect(cache.size).toBe(0);
  });

  test("an entry past its expiry is never served: the token is verified again", async () => {
    const cache = new VerifiedTokenCache();
    const verifier = createClerkVerifier(options, cache);
    // A remembered result that has expired, for a string that would not verify: if the cache
    // served it, verify would succeed.
    cache.remember("not.a.token", {
      userId: "user_ghost",
      sessionId: null,
      expiresAt: Date.now() - 1,
    });
    expect(await refusal(verifier.verify("not.a.token"))).toBe("TOKEN_INVALID");
    expect(cache.get("not.a.token")).toBeUndefined();
    expect(cache.size).toBe(0);
  });

  test("it is bounded: past the cap the oldest entry goes first", () => {
    const cache = new VerifiedTokenCache(2);
    const later = Date.now() + 60_000;
    for (const t of ["a", "b", "c"])
      cache.remember(t, { userId: t, sessionId: null, expiresAt: later });
    expect(cache.size).toBe(2);
    expect(cache.get("a")).toBeUndefined();
    expect(cache.get("b")?.userId).toBe("b");
    expect(cache.get("c")?.userId).toBe("c");
  });
});

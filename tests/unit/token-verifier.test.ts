/**
 * The PEM-key verifier (server/src/auth/local-key.ts) against @clerk/backend's `verifyToken`:
 * on the same tokens, valid and broken in every way a check covers, both must accept or
 * refuse alike, with the same reason (and so the same ConnectErrorCode), and accept with the
 * same claims. And the key is imported once per verifier, not once per token.
 */
import { createSign, generateKeyPairSync, webcrypto } from "node:crypto";
import { verifyToken } from "@clerk/backend";
import { decodeJwt } from "@clerk/backend/jwt";
import fc from "fast-check";
import { afterEach, describe, expect, test, vi } from "vitest";
import { ConnectErrorCode } from "../../protocol/constants.js";
import { mintSessionToken } from "../../server/src/auth/dev-keys.js";
import {
  CLOCK_SKEW_MS,
  createLocalKeyVerify,
  decodeToken,
} from "../../server/src/auth/local-key.js";
import {
  createClerkVerifier,
  TokenError,
  VerifiedTokenCache,
} from "../../server/src/auth/token-verifier.js";
import { AUTHORIZED_PARTY, testKeys } from "../helpers/server.js";

const other = generateKeyPairSync("rsa", {
  modulusLength: 2048,
  publicKeyEncoding: { type: "spki", format: "pem" },
  privateKeyEncoding: { type: "pkcs8", format: "pem" },
});

const b64 = (s: string | Buffer) => Buffer.from(s).toString("base64url");
const hashOf = { RS256: "sha256", RS384: "sha384", RS512: "sha512" } as Record<string, string>;

/** A token of exactly these header and payload bytes, signed with the test key. */
function rawTokenBytes(header: Buffer, payload: Buffer): string {
  const input = `${header.toString("base64url")}.${payload.toString("base64url")}`;
  const signature = createSign("sha256").update(input).sign(testKeys.privateKeyPem);
  return `${input}.${signature.toString("base64url")}`;
}

/**
 * The same base64url text with spare bits set in its last character (a part whose length is not
 * a multiple of 4 has 2 or 4 bits past its last byte): the same bytes to a lenient decoder.
 */
function spareBits(part: string): string {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  if (part.length % 4 === 0 || part.length % 4 === 1) return `${part.slice(0, -2)}A`; // 4n+2 then
  const last = alphabet.indexOf(part.at(-1) as string);
  return `${part.slice(0, -1)}${alphabet[last | 1]}`;
}

/** A token with exactly this header and payload JSON, signed with `key` (default the test key). */
function rawToken(
  header: string,
  payload: string,
  { key = testKeys.privateKeyPem, hash = "sha256" } = {},
): string {
  const input = `${b64(header)}.${b64(payload)}`;
  const signature = createSign(hash).update(input).sign(key);
  return `${input}.${signature.toString("base64url")}`;
}

function token(
  claims: Record<string, unknown>,
  header: Record<string, unknown> = { typ: "JWT", kid: "ins_dev", alg: "RS256" },
  key?: string,
): string {
  const alg = String(header.alg ?? "RS256");
  return rawToken(JSON.stringify(header), JSON.stringify(claims), {
    ...(key ? { key } : {}),
    hash: hashOf[alg] ?? "sha256",
  });
}

type Outcome = { accepted: true; payload: unknown } | { accepted: false; reason: string };

async function outcome(run: () => Promise<unknown>): Promise<Outcome> {
  try {
    return { accepted: true, payload: await run() };
  } catch (e) {
    const reason = (e as { reason?: string }).reason;
    return { accepted: false, reason: reason ?? `(${(e as Error).name})` };
  }
}

/** Every case, built at the frozen time `nowMs`. */
function cases(nowMs: number): [string, string][] {
  const now = Math.floor(nowMs / 1000);
  const base = { sub: "user_diff", sid: "sess_1", azp: AUTHORIZED_PARTY, iat: now, nbf: now - 5 };
  const ok = { ...base, exp: now + 60 };
  const good = token(ok);
  const [h, p, s] = good.split(".") as [string, string, string];
  const flipped = `${s.slice(0, 10)}${s[10] === "A" ? "B" : "A"}${s.slice(11)}`;
  const list: [string, string][] = [
    ["valid", good],
    ["expired 1 s ago (within the skew)", token({ ...base, exp: now - 1 })],
    ["expired 4 s ago", token({ ...base, exp: now - 4 })],
    ["expired exactly at the skew", token({ ...base, exp: now - CLOCK_SKEW_MS / 1000 })],
    ["expired 1 s past the skew", token({ ...base, exp: now - 6 })],
    ["expires now", token({ ...base, exp: now })],
    ["exp fractional", token({ ...base, exp: now - 5.5 })],
    ["exp missing", token({ ...base })],
    ["exp a string", token({ ...base, exp: String(now + 60) })],
    [
      "exp beyond a Date",
      rawToken(
        JSON.stringify({ alg: "RS256" }),
        `{"sub":"u","azp":"${AUTHORIZED_PARTY}","exp":1e400}`,
      ),
    ],
    ["exp finite but past year 275760", token({ ...base, exp: 9e15 })],
    ["nbf 5 s ahead (at the skew)", token({ ...ok, nbf: now + 5 })],
    ["nbf 6 s ahead", token({ ...ok, nbf: now + 6 })],
    ["nbf a string", token({ ...ok, nbf: "soon" })],
    ["nbf absent", token({ sub: "u", azp: AUTHORIZED_PARTY, exp: now + 60 })],
    ["iat 5 s ahead", token({ ...ok, iat: now + 5 })],
    ["iat 6 s ahead", token({ ...ok, iat: now + 6 })],
    ["iat a string", token({ ...ok, iat: "now" })],
    ["wrong azp", token({ ...ok, azp: "https://evil.example.com" })],
    ["empty azp", token({ ...ok, azp: "" })],
    ["no azp", token({ sub: "u", exp: now + 60 })],
    ["wrong azp and expired (azp is checked first)", token({ ...base, azp: "x", exp: now - 60 })],
    ["sub missing", token({ azp: AUTHORIZED_PARTY, exp: now + 60 })],
    ["sub a number", token({ ...ok, sub: 42 })],
    ["sub empty", token({ ...ok, sub: "" })],
    ["RS384 with the right key", token(ok, { typ: "JWT", alg: "RS384" })],
    ["RS512 with the right key", token(ok, { typ: "JWT", alg: "RS512" })],
    ["HS256", token(ok, { typ: "JWT", alg: "HS256" })],
    ["alg none", `${b64(JSON.stringify({ alg: "none" }))}.${p}.`],
    ["alg missing", token(ok, { typ: "JWT" })],
    ["typ missing", token(ok, { alg: "RS256" })],
    ["typ at+jwt", token(ok, { typ: "at+jwt", alg: "RS256" })],
    ["machine token category", token(ok, { typ: "JWT", alg: "RS256", cat: "cl_B7d4PD333AAA" })],
    ["another kid (a PEM key has none)", token(ok, { typ: "JWT", alg: "RS256", kid: "ins_x" })],
    ["no kid", token(ok, { typ: "JWT", alg: "RS256" })],
    ["signed by another key", token(ok, undefined, other.privateKey)],
    ["payload tampered", `${h}.${b64(JSON.stringify({ ...ok, sub: "user_admin" }))}.${s}`],
    ["signature tampered", `${h}.${p}.${flipped}`],
    ["signature truncated", `${h}.${p}.${s.slice(0, 40)}`],
    ["signature empty", `${h}.${p}.`],
    ["signature not base64url", `${h}.${p}.!!!`],
    ["two parts", `${h}.${p}`],
    ["four parts", `${good}.x`],
    ["header not JSON", `${b64("{nope")}.${p}.${s}`],
    ["payload not JSON", `${h}.${b64("[1,")}.${s}`],
    ["payload null", rawToken(JSON.stringify({ alg: "RS256" }), "null")],
    ["header null", rawToken("null", JSON.stringify(ok))],
    ["garbage", "not a token"],
    // Decoding: what the library's base64url reader (loose) admits and refuses.
    ["padded parts", `${h}==.${p}=.${s}===`],
    ["padding inside a part", `${h.slice(0, 4)}=${h.slice(4)}.${p}.${s}`],
    ["standard base64 characters", `${h}.${p}.${s.replace(/-/g, "+").replace(/_/g, "/")}`],
    ["a lone last character in the signature", `${h}.${p}.${s}A`],
    ["a lone last character in the header", `${h.length % 4 === 0 ? h : "eyJh"}A.${p}.${s}`],
    ["signature's last character with spare bits set", `${h}.${p}.${spareBits(s)}`],
    ["payload's last character with spare bits set", `${h}.${spareBits(p)}.${s}`],
    ["whitespace in the payload", `${h}.${p.slice(0, 8)} ${p.slice(8)}.${s}`],
    ["an empty header", `.${p}.${s}`],
    [
      "a BOM before the header's JSON",
      rawToken(`\uFEFF${JSON.stringify({ alg: "RS256" })}`, JSON.stringify(ok)),
    ],
    [
      "invalid UTF-8 in the payload's JSON",
      rawTokenBytes(
        Buffer.from(JSON.stringify({ alg: "RS256" })),
        Buffer.concat([
          Buffer.from(`{"sub":"u\xff`, "latin1"),
          Buffer.from(`","azp":"${AUTHORIZED_PARTY}","exp":${now + 60}}`),
        ]),
      ),
    ],
  ];
  return list;
}

afterEach(() => {
  vi.useRealTimers();
  vi.restoreAllMocks();
});

describe("the PEM-key verifier agrees with @clerk/backend's verifyToken", () => {
  for (const parties of [[AUTHORIZED_PARTY], undefined, []] as (string[] | undefined)[]) {
    // A whole second, and half a second past one: the skew boundaries fall differently.
    for (const offsetMs of [0, 500]) {
      test(`authorizedParties ${JSON.stringify(parties)}, clock at +${offsetMs} ms`, async () => {
        const nowMs = Math.floor(Date.now() / 1000) * 1000 + offsetMs;
        const all = cases(nowMs);
        vi.useFakeTimers({ toFake: ["Date"] });
        vi.setSystemTime(nowMs);
        const options = { jwtKey: testKeys.publicKeyPem, authorizedParties: parties };
        const library = (t: string) => verifyToken(t, options);
        const local = createLocalKeyVerify(testKeys.publicKeyPem, parties, () => {
          throw new Error("the key must import: no fallback in this test");
        });
        const accepted: string[] = [];
        for (const [name, t] of all) {
          const expected = await outcome(() => library(t));
          const actual = await outcome(() => local(t));
          expect({ name, ...actual }).toEqual({ name, ...expected });
          if (expected.accepted) accepted.push(name);
        }
        // The cases exercise both verdicts, not just one.
        expect(accepted).toContain("valid");
        expect(accepted.length).toBeLessThan(all.length / 2);
      });
    }
  }

  test("each refusal maps to the same ConnectErrorCode through createClerkVerifier", async () => {
    const nowMs = Date.now();
    const all = cases(nowMs);
    vi.useFakeTimers({ toFake: ["Date"] });
    vi.setSystemTime(nowMs);
    const options = { jwtKey: testKeys.publicKeyPem, authorizedParties: [AUTHORIZED_PARTY] };
    const verifier = createClerkVerifier(options, new VerifiedTokenCache());
    const codes = new Map<string, string>();
    for (const [name, t] of all) {
      const viaLibrary = await outcome(() => verifyToken(t, options));
      let code = "accepted";
      try {
        await verifier.verify(t);
      } catch (e) {
        if (!(e instanceof TokenError)) throw e;
        code = e.code;
      }
      codes.set(name, code);
      const expected = viaLibrary.accepted
        ? "accepted"
        : viaLibrary.reason === "token-expired"
          ? ConnectErrorCode.TOKEN_EXPIRED
          : viaLibrary.reason === "token-invalid-authorized-parties"
            ? ConnectErrorCode.TOKEN_WRONG_PARTY
            : ConnectErrorCode.TOKEN_INVALID;
      // Beyond verifyToken, the server refuses an empty subject and an unrepresentable expiry.
      const stricter =
        viaLibrary.accepted &&
        ["sub empty", "exp beyond a Date", "exp finite but past year 275760"].includes(name);
      expect({ name, code }).toEqual({
        name,
        code: stricter ? ConnectErrorCode.TOKEN_INVALID : expected,
      });
    }
    expect(codes.get("valid")).toBe("accepted");
    expect(codes.get("expired 1 s past the skew")).toBe(ConnectErrorCode.TOKEN_EXPIRED);
    expect(codes.get("wrong azp")).toBe(ConnectErrorCode.TOKEN_WRONG_PARTY);
    expect(codes.get("payload tampered")).toBe(ConnectErrorCode.TOKEN_INVALID);
  });
});

describe("decoding agrees with @clerk/backend's decodeJwt", () => {
  /** decodeJwt's or decodeToken's result, or the reason and message it refused with. */
  const decodeOutcome = (decode: (t: string) => unknown, t: string) => {
    try {
      const d = decode(t) as { signature: Uint8Array };
      return { ...d, signature: [...d.signature] };
    } catch (e) {
      const err = e as { reason?: string; message: string };
      return { refused: err.reason ?? "(no reason)", message: err.message };
    }
  };

  test("on every case above", () => {
    for (const [name, t] of cases(Date.now())) {
      expect({ name, ...decodeOutcome(decodeToken, t) }).toEqual({
        name,
        ...decodeOutcome(decodeJwt, t),
      });
    }
  });

  test("on random strings over the base64url alphabet, padding, dots and strays", () => {
    // Parts built from the characters that decide a decoder's verdict: the alphabet, `=`
    // anywhere, `+` `/` and a space (standard base64 and whitespace), and a lone dot count.
    const char = fc.constantFrom(
      ..."ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/ .".split(""),
    );
    const part = fc.oneof(
      fc.string({ unit: char, maxLength: 12 }),
      // Valid base64url of JSON (or not), then perhaps one character changed.
      fc
        .tuple(fc.oneof(fc.json(), fc.string()), fc.nat(), char, fc.boolean())
        .map(([json, at, c, change]) => {
          const b = Buffer.from(json).toString("base64url");
          return change && b.length > 0
            ? `${b.slice(0, at % b.length)}${c}${b.slice((at % b.length) + 1)}`
            : b;
        }),
    );
    fc.assert(
      fc.property(fc.array(part, { minLength: 1, maxLength: 4 }), (parts) => {
        const t = parts.join(".");
        expect(decodeOutcome(decodeToken, t)).toEqual(decodeOutcome(decodeJwt, t));
      }),
      { numRuns: 3000 },
    );
    // A header and payload that decode, so that the verdict is the signature part's alone.
    const jsonPart = fc.json().map((j) => Buffer.from(j).toString("base64url"));
    fc.assert(
      fc.property(jsonPart, jsonPart, part, (header, payload, signature) => {
        const t = `${header}.${payload}.${signature}`;
        expect(decodeOutcome(decodeToken, t)).toEqual(decodeOutcome(decodeJwt, t));
      }),
      { numRuns: 3000 },
    );
  });
});

describe("the key is imported once", () => {
  test("1,000 verifications of distinct tokens import the key one time", async () => {
    const importKey = vi.spyOn(webcrypto.subtle, "importKey");
    let hookImports = 0;
    const verifier = createClerkVerifier(
      {
        jwtKey: testKeys.publicKeyPem,
        authorizedParties: [AUTHORIZED_PARTY],
        hooks: { onKeyImport: () => hookImports++ },
      },
      new VerifiedTokenCache(),
    );
    const tokens = await Promise.all(
      Array.from({ length: 1000 }, (_, i) =>
        mintSessionToken(testKeys.privateKeyPem, `user_once_${i}`, {
          authorizedParty: AUTHORIZED_PARTY,
        }),
      ),
    );
    // Minting imports the private key through WebCrypto too; count only what verifying does.
    importKey.mockClear();
    const verified = await Promise.all(tokens.map((t) => verifier.verify(t)));
    expect(verified.map((v) => v.userId)).toEqual(tokens.map((_, i) => `user_once_${i}`));
    expect(importKey).toHaveBeenCalledTimes(1);
    expect(hookImports).toBe(1);
  });

  test("a PEM the key import rejects is left to verifyToken, which refuses as before", async () => {
    const broken = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
    const verifier = createClerkVerifier({ jwtKey: broken }, new VerifiedTokenCache());
    const t = await mintSessionToken(testKeys.privateKeyPem, "user_broken_key");
    const viaLibrary = await outcome(() => verifyToken(t, { jwtKey: broken }));
    expect(viaLibrary.accepted).toBe(false);
    await expect(verifier.verify(t)).rejects.toMatchObject({
      code: ConnectErrorCode.TOKEN_INVALID,
    });
  });
});

/**
 * Networkless verification of Clerk session tokens against CLERK_JWT_KEY, on a key imported
 * once. @clerk/backend's `verifyToken` turns the PEM into a JWK and imports it through
 * WebCrypto on every call, then verifies through WebCrypto's asynchronous job queue: together
 * most of a first handshake's CPU. This module makes the same checks, in the same order, with
 * the same refusal reasons (the library's own TokenVerificationError), but imports the key one
 * time and verifies the signature synchronously on it. tests/unit/token-verifier.test.ts runs
 * both on the same tokens and requires the same verdict and reason for each.
 *
 * What is the library's own code here: the PEM-to-JWK conversion is its `loadClerkJwkFromPem`
 * step for step, the key import is its WebCrypto import of that JWK, and the errors are its
 * class and reasons. Decoding is `decodeJwt`'s, on Node's native base64url decoder instead of
 * the library's JavaScript one (a third of the cost; `decodeToken` below, held to `decodeJwt`'s
 * results and refusals by tests/unit/token-verifier.test.ts, cases and a property test). The claim checks mirror its (unexported)
 * assertions for the options this server passes: no `audience`, no `issuer`, no
 * `headerType`, the default clock skew.
 */
import { KeyObject, verify, webcrypto } from "node:crypto";
import {
  TokenVerificationError,
  TokenVerificationErrorAction,
  TokenVerificationErrorReason,
} from "@clerk/backend/errors";
import type { decodeJwt } from "@clerk/backend/jwt";

/** The claims of a verified token, as `verifyToken` returns them. */
export type LocalKeyPayload = ReturnType<typeof decodeJwt>["payload"];
type Decoded = ReturnType<typeof decodeJwt>;

/** @clerk/backend's DEFAULT_CLOCK_SKEW_IN_MS: `exp`, `nbf` and `iat` are allowed 5 s of drift. */
export const CLOCK_SKEW_MS = 5_000;
/** The header `cat` of Clerk machine (M2M) tokens, which `verifyToken` refuses as sessions. */
const M2M_TOKEN_CATEGORY = "cl_B7d4PD333AAA";
/** The algorithms the library's header check admits. */
const HEADER_ALGORITHMS = ["RS256", "RS384", "RS512"];
// loadClerkJwkFromPem's constants: the SPKI framing of a 2048-bit RSA key with e = 65537.
const PEM_HEADER = "-----BEGIN PUBLIC KEY-----";
const PEM_TRAILER = "-----END PUBLIC KEY-----";
const RSA_PREFIX = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA";
const RSA_SUFFIX = "IDAQAB";
const RSA_PKCS1 = { name: "RSASSA-PKCS1-v1_5", hash: { name: "SHA-256" } };
/** The base64url alphabet: the only characters the library's decoder admits (besides `=`). */
const BASE64URL = /^[A-Za-z0-9_-]*$/;
/** One decoder for every token, as the library's `new TextDecoder()` (UTF-8, not fatal, BOM dropped). */
const utf8 = new TextDecoder();

export interface LocalKeyHooks {
  /** Called on each import of the key (tests count them: there is one per verifier). */
  onKeyImport?: () => void;
}

/**
 * A verifier for tokens signed with `pem`. Resolves to the payload or rejects with the
 * TokenVerificationError `verifyToken` would give. `fallback` is `verifyToken` itself: should
 * the key not import (a PEM the library cannot use either), every token goes to it, so even a
 * misconfiguration is refused exactly as before.
 */
export function createLocalKeyVerify(
  pem: string,
  authorizedParties: string[] | undefined,
  fallback: (token: string) => Promise<LocalKeyPayload>,
  hooks: LocalKeyHooks = {},
): (token: string) => Promise<LocalKeyPayload> {
  let key: Promise<KeyObject | undefined> | undefined;
  const loadKey = () => {
    key ??= importPem(pem, hooks).catch(() => undefined);
    return key;
  };
  return async (token) => {
    const keyObject = await loadKey();
    if (!keyObject) return fallback(token);
    return verifyOnKey(token, keyObject, authorizedParties);
  };
}

/** The JWK `loadClerkJwkFromPem` builds, imported as `hasValidSignature` imports it. */
async function importPem(pem: string, hooks: LocalKeyHooks): Promise<KeyObject> {
  hooks.onKeyImport?.();
  const n = pem
    .replace(/\r\n|\n|\r/g, "")
    .replace(PEM_HEADER, "")
    .replace(PEM_TRAILER, "")
    .replace(RSA_PREFIX, "")
    .replace(RSA_SUFFIX, "")
    .replace(/\+/g, "-")
    .replace(/\//g, "_");
  const jwk = { kty: "RSA", alg: "RS256", n, e: "AQAB" };
  const cryptoKey = await webcrypto.subtle.importKey("jwk", jwk, RSA_PKCS1, false, ["verify"]);
  return KeyObject.from(cryptoKey);
}

function fail(
  reason: (typeof TokenVerificationErrorReason)[keyof typeof TokenVerificationErrorReason],
  message: string,
): never {
  throw new TokenVerificationError({
    action: TokenVerificationErrorAction.EnsureClerkJWT,
    reason,
    message,
  });
}

/**
 * One part of a token as the library's `base64url.parse(part, { loose: true })` reads it, or a
 * SyntaxError where it throws: trailing `=` are dropped; any other character outside the
 * alphabet, a length that leaves a lone character (4n + 1), or a last character with bits
 * set beyond the data, is refused. What it admits, Node's decoder reads to the same bytes.
 */
function base64urlPart(part: string): Buffer {
  let end = part.length;
  while (end > 0 && part.charCodeAt(end - 1) === 0x3d) end--;
  const text = end === part.length ? part : part.slice(0, end);
  if (!BASE64URL.test(text)) throw new SyntaxError("Invalid character");
  const rest = text.length & 3;
  if (rest === 1) throw new SyntaxError("Unexpected end of data");
  if (rest !== 0) {
    // The last character carries 2 (rest 3) or 4 (rest 2) bits past the last byte: they must be 0.
    const c = text.charCodeAt(text.length - 1);
    const value =
      c === 95 ? 63 : c === 45 ? 62 : c >= 97 ? c - 71 : c >= 65 ? c - 65 : /* 0-9 */ c + 4;
    if (value & (rest === 2 ? 0x0f : 0x03)) throw new SyntaxError("Unexpected end of data");
  }
  return Buffer.from(text, "base64url");
}

/**
 * `decodeJwt` (@clerk/backend/jwt): the same parts, the same JSON, the same refusals (its
 * TokenVerificationError, reason token-invalid, with its messages), the same `raw`.
 */
export function decodeToken(token: string): Decoded {
  const parts = (token || "").toString().split(".");
  if (parts.length !== 3) {
    fail(
      TokenVerificationErrorReason.TokenInvalid,
      "Invalid JWT form. A JWT consists of three parts separated by dots.",
    );
  }
  const [rawHeader, rawPayload, rawSignature] = parts as [string, string, string];
  let header: Decoded["header"];
  let payload: Decoded["payload"];
  let signature: Uint8Array;
  try {
    header = JSON.parse(utf8.decode(base64urlPart(rawHeader)));
    payload = JSON.parse(utf8.decode(base64urlPart(rawPayload)));
    const bytes = base64urlPart(rawSignature);
    // A Uint8Array of its own, as the library returns (not a view on Node's buffer pool).
    signature = new Uint8Array(bytes);
  } catch {
    fail(
      TokenVerificationErrorReason.TokenInvalid,
      "Invalid JWT form. The header, payload, or signature could not be decoded.",
    );
  }
  return {
    header,
    payload,
    signature,
    raw: { header: rawHeader, payload: rawPayload, signature: rawSignature, text: token },
  };
}

/** `verifyToken` → `verifyJwt`, check for check, on an imported key. */
function verifyOnKey(
  token: string,
  key: KeyObject,
  authorizedParties: string[] | undefined,
): LocalKeyPayload {
  // Throws the library's TokenVerificationError (reason token-invalid) on a malformed token.
  const decoded = decodeToken(token);
  const { header, payload, signature, raw } = decoded;
  const R = TokenVerificationErrorReason;
  if (header.cat === M2M_TOKEN_CATEGORY) fail(R.TokenInvalid, "Invalid session token category.");
  // assertHeaderType without allowed types: an absent typ passes, a present one must be JWT.
  if (header.typ !== undefined && header.typ !== "JWT") fail(R.TokenInvalid, "Invalid JWT type.");
  if (!HEADER_ALGORITHMS.includes(header.alg)) {
    fail(R.TokenInvalidAlgorithm, "Invalid JWT algorithm.");
  }
  // The library's key is a JWK with alg RS256: WebCrypto refuses to import it for RS384 or
  // RS512, which verifyJwt reports as a failed verification.
  if (header.alg !== "RS256") fail(R.TokenVerificationFailed, "Error verifying JWT signature.");
  const data = Buffer.from(`${raw.header}.${raw.payload}`, "utf8");
  let valid: boolean;
  try {
    // PKCS#1 v1.5 padding: the default for an RSA key (and RSASSA-PKCS1-v1_5, WebCrypto's).
    // The key itself, not `{ key, padding }`: Node re-prepares an options object on every call.
    valid = verify("sha256", data, key, signature as Uint8Array);
  } catch {
    fail(R.TokenVerificationFailed, "Error verifying JWT signature.");
  }
  if (!valid) fail(R.TokenInvalidSignature, "JWT signature is invalid.");

  const { azp, sub, iat, exp, nbf } = payload as Record<string, unknown>;
  if (typeof sub !== "string") fail(R.TokenVerificationFailed, "Subject claim (sub) is required.");
  // No audience is configured: assertAudienceClaim checks nothing.
  if (authorizedParties && authorizedParties.length > 0) {
    if (!azp || !authorizedParties.includes(azp as string)) {
      fail(R.TokenInvalidAuthorizedParties, "Invalid JWT Authorized party claim (azp).");
    }
  }
  // No issuer is configured: assertIssuerClaim checks nothing.
  const now = Date.now();
  if (typeof exp !== "number") fail(R.TokenVerificationFailed, "Invalid JWT expiry date claim.");
  // Dates are built as the library builds them (setUTCSeconds: fractions dropped, a value
  // beyond a Date's range gives NaN, which compares false), so edge values behave the same.
  if (secondsToMs(exp) <= now - CLOCK_SKEW_MS) fail(R.TokenExpired, "JWT is expired.");
  if (nbf !== undefined) {
    if (typeof nbf !== "number") fail(R.TokenVerificationFailed, "Invalid JWT nbf claim.");
    if (secondsToMs(nbf) > now + CLOCK_SKEW_MS) fail(R.TokenNotActiveYet, "JWT is not active yet.");
  }
  if (iat !== undefined) {
    if (typeof iat !== "number") fail(R.TokenVerificationFailed, "Invalid JWT iat claim.");
    if (secondsToMs(iat) > now + CLOCK_SKEW_MS) fail(R.TokenIatInTheFuture, "JWT iat is ahead.");
  }
  return payload;
}

function secondsToMs(seconds: number): number {
  const date = new Date(0);
  date.setUTCSeconds(seconds);
  return date.getTime();
}

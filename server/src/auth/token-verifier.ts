import { verifyToken } from "@clerk/backend";
import { ConnectErrorCode } from "../../../protocol/constants.js";
import { ExpiringMap } from "../expiring-map.js";
import { isStorableText } from "../protocol-schemas.js";
import { createLocalKeyVerify, type LocalKeyHooks } from "./local-key.js";

/** What the server keeps of a verified Clerk session token. */
export interface VerifiedToken {
  /** Clerk user id (`sub`). */
  userId: string;
  /** Clerk session id (`sid`), when present. */
  sessionId: string | null;
  /** `exp`, in epoch milliseconds. */
  expiresAt: number;
}

/** A token was refused; `code` says why (sent to the client as `connect_error.data.code`). */
export class TokenError extends Error {
  override name = "TokenError";
  constructor(
    readonly code: ConnectErrorCode,
    message: string,
  ) {
    super(message);
  }
}

export interface TokenVerifier {
  verify(token: string): Promise<VerifiedToken>;
}

export interface ClerkVerifierOptions {
  /** PEM public key: networkless verification. */
  jwtKey?: string | undefined;
  /** Clerk secret key: JWKS fetched (and cached) from Clerk when there is no jwtKey. */
  secretKey?: string | undefined;
  /** Accepted `azp` values; undefined accepts any (development only). */
  authorizedParties?: string[] | undefined;
  /** Test hooks of the jwtKey path (local-key.ts). */
  hooks?: LocalKeyHooks | undefined;
}

// Clerk's TokenVerificationError reasons that are the client's fault and mean something
// other than "invalid".
const reasonToCode: Record<string, ConnectErrorCode> = {
  "token-expired": ConnectErrorCode.TOKEN_EXPIRED,
  "token-invalid-authorized-parties": ConnectErrorCode.TOKEN_WRONG_PARTY,
  "jwk-remote-failed-to-load": ConnectErrorCode.UNAVAILABLE,
};

const MAX_TOKEN_LENGTH = 16_384;

/**
 * Tokens remembered as verified. A Clerk token is reused by its client until shortly before it
 * expires (Clerk's `getToken` caches it), so every reconnect in that time (a network blip, a
 * node draining for a deploy) presents a token this node has verified already; remembering the
 * result spares the RSA work, which is most of a handshake's CPU. Bounded: about 10 MB at most.
 */
const MAX_REMEMBERED_TOKENS = 10_000;

/**
 * The results of `verify` for tokens that passed, until their `exp`. A token is a signed,
 * immutable string: the same string verifies to the same claims, and nothing about it can
 * change but the clock. So a hit is only used before `exp`; past it the token is verified
 * again (which applies Clerk's clock skew). Refusals are never remembered, and
 * revocation is checked by the callers on every use.
 */
export class VerifiedTokenCache extends ExpiringMap<string, VerifiedToken> {
  constructor(max = MAX_REMEMBERED_TOKENS) {
    super(max);
  }

  /** Remembers a verified token until its `exp`. */
  remember(token: string, verified: VerifiedToken): void {
    this.set(token, verified, verified.expiresAt);
  }
}

/**
 * Verifies Clerk session tokens. With a secret key, through @clerk/backend's `verifyToken`
 * (JWKS fetched and cached by the library). With a PEM key, through local-key.ts: the same
 * checks and refusal reasons as `verifyToken`, on a key imported once instead of on every
 * call. Development mode uses the PEM path with a locally generated key (see dev-keys.ts).
 */
export function createClerkVerifier(
  options: ClerkVerifierOptions,
  cache = new VerifiedTokenCache(),
): TokenVerifier {
  if (!options.jwtKey && !options.secretKey) {
    throw new Error("createClerkVerifier needs jwtKey or secretKey");
  }
  const clerkVerify = (token: string) =>
    verifyToken(token, {
      jwtKey: options.jwtKey,
      secretKey: options.jwtKey ? undefined : options.secretKey,
      authorizedParties: options.authorizedParties,
    });
  const verifyClaims = options.jwtKey
    ? createLocalKeyVerify(options.jwtKey, options.authorizedParties, clerkVerify, options.hooks)
    : clerkVerify;
  return {
    async verify(token) {
      if (!token) throw new TokenError(ConnectErrorCode.TOKEN_MISSING, "No token was sent");
      if (token.length > MAX_TOKEN_LENGTH) {
        throw new TokenError(ConnectErrorCode.TOKEN_INVALID, "Token is too long");
      }
      const remembered = cache.get(token);
      if (remembered) return remembered;
      let payload: Awaited<ReturnType<typeof verifyToken>>;
      try {
        payload = await verifyClaims(token);
      } catch (e) {
        const reason = (e as { reason?: string }).reason ?? "";
        const code = reasonToCode[reason] ?? ConnectErrorCode.TOKEN_INVALID;
        throw new TokenError(code, messageFor(code));
      }
      const sub = payload.sub;
      // The subject becomes users.clerk_id: text Postgres cannot store (NUL, lone surrogates)
      // would fail the handshake as if the database were down.
      if (typeof sub !== "string" || sub.length === 0 || sub.length > 200 || !isStorableText(sub)) {
        throw new TokenError(ConnectErrorCode.TOKEN_INVALID, "Token has no subject");
      }
      // An `exp` beyond what a Date can hold (year 275760) breaks every use of the expiry.
      const expiresAt = payload.exp * 1000;
      if (!Number.isFinite(new Date(expiresAt).getTime())) {
        throw new TokenError(ConnectErrorCode.TOKEN_INVALID, "Token expiry is out of range");
      }
      const sid = typeof payload.sid === "string" ? payload.sid : null;
      const verified = Object.freeze({ userId: sub, sessionId: sid, expiresAt });
      cache.remember(token, verified);
      return verified;
    },
  };
}

function messageFor(code: ConnectErrorCode): string {
  switch (code) {
    case ConnectErrorCode.TOKEN_EXPIRED:
      return "Token has expired";
    case ConnectErrorCode.TOKEN_WRONG_PARTY:
      return "Token was issued for another application (azp)";
    case ConnectErrorCode.UNAVAILABLE:
      return "Could not load Clerk's signing keys; try again";
    default:
      return "Token is invalid";
  }
}

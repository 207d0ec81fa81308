/**
 * Development auth: an RSA key pair generated on first use into `<DATA_DIR>/dev-keys/`
 * (git-ignored), and Clerk-shaped session tokens signed with it. The server verifies these
 * through the same `verifyToken` as real Clerk tokens. Never used in production.
 */
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { mkdir, readFile, rename, writeFile } from "node:fs/promises";
import path from "node:path";
import { signJwt } from "@clerk/backend/jwt";

export interface DevKeys {
  privateKeyPem: string;
  publicKeyPem: string;
}

export async function loadOrCreateDevKeys(dataDir: string): Promise<DevKeys> {
  const dir = path.resolve(dataDir, "dev-keys");
  const privatePath = path.join(dir, "private.pem");
  const publicPath = path.join(dir, "public.pem");
  try {
    const [privateKeyPem, publicKeyPem] = await Promise.all([
      readFile(privatePath, "utf8"),
      readFile(publicPath, "utf8"),
    ]);
    return { privateKeyPem, publicKeyPem };
  } catch {
    // First use: generate below.
  }
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const { privateKey, publicKey } = generateKeyPairSync("rsa", {
    modulusLength: 2048,
    publicKeyEncoding: { type: "spki", format: "pem" },
    privateKeyEncoding: { type: "pkcs8", format: "pem" },
  });
  // Write both under temporary names, then rename: a concurrent reader never sees half a pair.
  const tag = randomBytes(4).toString("hex");
  await writeFile(`${publicPath}.${tag}`, publicKey, { mode: 0o644 });
  await writeFile(`${privatePath}.${tag}`, privateKey, { mode: 0o600 });
  await rename(`${publicPath}.${tag}`, publicPath);
  await rename(`${privatePath}.${tag}`, privatePath);
  return { privateKeyPem: privateKey, publicKeyPem: publicKey };
}

export interface MintOptions {
  /** Clerk session id; default a random `sess_…`. */
  sessionId?: string;
  /** Lifetime in seconds; default 60, like Clerk's. */
  ttlSeconds?: number;
  /** `azp` claim; default http://localhost:3000. */
  authorizedParty?: string;
  /** Overrides of any claim (tests use this for expired or not-yet-valid tokens). */
  claims?: Record<string, unknown>;
}

/** Signs a Clerk-shaped (v2) session token for `userId` with the given private key. */
export async function mintSessionToken(
  privateKeyPem: string,
  userId: string,
  options: MintOptions = {},
): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  const payload = {
    sub: userId,
    sid: options.sessionId ?? `sess_${randomBytes(12).toString("hex")}`,
    iss: "https://dev.clerk.local",
    azp: options.authorizedParty ?? "http://localhost:3000",
    nbf: now - 5,
    exp: now + (options.ttlSeconds ?? 60),
    v: 2,
    ...options.claims,
  };
  return signJwt(payload, privateKeyPem, {
    algorithm: "RS256",
    header: { typ: "JWT", kid: "ins_dev" },
  });
}

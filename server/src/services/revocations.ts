/**
 * Clerk sessions that were revoked and users that were deleted, remembered for longer than any
 * token they held can live, so that such a token cannot open a new socket (or refresh one)
 * after the webhook disconnected it. Shared through Redis when there is one; this node's
 * memory always holds what it learned itself.
 */
import type { Redis } from "ioredis";
import { ExpiringMap } from "../expiring-map.js";

/** Longer than a Clerk session token's life (60 s) plus clock skew and the refresh grace. */
const REMEMBER_SECONDS = 600;
/** Most revocations one node remembers itself (Redis holds them all). */
const MAX_REMEMBERED = 100_000;

export class Revocations {
  private readonly memory = new ExpiringMap<string, true>(MAX_REMEMBERED);

  constructor(
    private readonly redis?: Redis,
    private readonly keyPrefix = "chat",
  ) {}

  private key(kind: "user" | "session", id: string): string {
    return `${this.keyPrefix}:revoked:${kind}:${id}`;
  }

  async revoke(kind: "user" | "session", id: string): Promise<void> {
    const key = this.key(kind, id);
    this.memory.set(key, true, Date.now() + REMEMBER_SECONDS * 1000);
    if (this.redis?.status === "ready") {
      await this.redis.set(key, "1", "EX", REMEMBER_SECONDS).catch(() => {});
    }
  }

  /** True when the user was deleted or the session revoked recently. */
  async isRevoked(userId: string, sessionId: string | null): Promise<boolean> {
    const keys = [this.key("user", userId)];
    if (sessionId) keys.push(this.key("session", sessionId));
    if (keys.some((k) => this.memory.get(k))) return true;
    if (this.redis?.status !== "ready") return false;
    try {
      const found = await this.redis.mget(...keys);
      return found.some((v) => v !== null);
    } catch {
      return false; // Redis went away: what this node knows still applies (above)
    }
  }
}

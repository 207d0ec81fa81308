/**
 * Clerk sessions that were revoked and users that were deleted, remembered for longer than any
 * token they held can live, so that such a token cannot open a new socket (or refresh one)
 * after the webhook disconnected it. Shared through Redis when there is one; this node's
 * memory always holds what it learned itself. (A deleted user's tombstone in Postgres is the
 * durable record; this is what a node checks without a database round trip, and what keeps a
 * deleted user out of a node that still knows them: see DEFAULT_KNOWN_TTL_MS.)
 */

import { ExpiringMap } from "../expiring-map.js";
import { isCluster, type RedisClient } from "../redis/client.js";

/** Longer than a Clerk session token's life (60 s) plus clock skew and the refresh grace. */
const REMEMBER_SECONDS = 600;
/** How long a revocation lasts, in milliseconds (longer than a node trusts a known user). */
export const REVOCATION_TTL_MS = REMEMBER_SECONDS * 1000;
/** Most revocations one node remembers itself (Redis holds them all). */
const MAX_REMEMBERED = 100_000;

/** What was revoked: the user (deleted) or the Clerk session. */
export type RevocationKind = "user" | "session";

export class Revocations {
  /** What this node revoked; `shared` once Redis has it too (Redis then has the last word). */
  private readonly memory = new ExpiringMap<string, { shared: boolean }>(MAX_REMEMBERED);

  constructor(
    private readonly redis?: RedisClient,
    private readonly keyPrefix = "chat",
  ) {}

  private key(kind: RevocationKind, id: string): string {
    return `${this.keyPrefix}:revoked:${kind}:${id}`;
  }

  async revoke(kind: RevocationKind, id: string): Promise<void> {
    const key = this.key(kind, id);
    const entry = { shared: false };
    this.memory.set(key, entry, Date.now() + REVOCATION_TTL_MS);
    if (this.redis?.status === "ready") {
      await this.redis.set(key, "1", "EX", REMEMBER_SECONDS).then(
        () => {
          entry.shared = true;
        },
        () => {},
      );
    }
  }

  /**
   * Ends a revocation on every node (Clerk created a deleted user again). Rejects when Redis is
   * configured but did not take it, so that the caller fails and the webhook is retried.
   */
  async lift(kind: RevocationKind, id: string): Promise<void> {
    const key = this.key(kind, id);
    this.memory.delete(key);
    if (this.redis) await this.redis.del(key);
  }

  /** True when the user was deleted or the session revoked recently. */
  async isRevoked(userId: string, sessionId: string | null): Promise<boolean> {
    return (await this.revoked(userId, sessionId)) !== undefined;
  }

  /** What of the two was revoked recently: the user (first), the session, or neither. */
  async revoked(userId: string, sessionId: string | null): Promise<RevocationKind | undefined> {
    const keys: [RevocationKind, string][] = [["user", this.key("user", userId)]];
    if (sessionId) keys.push(["session", this.key("session", sessionId)]);
    const local = keys.map(([kind, key]) => [kind, this.memory.get(key)] as const);
    // What Redis never got (it was away when this node revoked) only this node knows.
    const unshared = local.find(([, entry]) => entry && !entry.shared);
    if (unshared) return unshared[0];
    if (this.redis?.status === "ready") {
      try {
        const names = keys.map(([, key]) => key);
        // A user's and a session's keys lie in different slots of a cluster, where MGET of
        // both is refused (CROSSSLOT): one GET each, in parallel.
        const redis = this.redis;
        const found = isCluster(redis)
          ? await Promise.all(names.map((key) => redis.get(key)))
          : await redis.mget(...names);
        const i = found.findIndex((v) => v !== null);
        return i === -1 ? undefined : keys[i]?.[0];
      } catch {
        // Redis went away: what this node knows still applies (below)
      }
    }
    return local.find(([, entry]) => entry)?.[0];
  }
}

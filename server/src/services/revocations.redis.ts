/**
 * Revocations shared by the nodes through Redis (one Redis or a Redis Cluster): a key per
 * revocation with a TTL. This node's memory always holds what it revoked itself, so a
 * revocation made while Redis was away still applies here (see revocations.ts).
 */
import { ExpiringMap } from "../expiring-map.js";
import { isCluster, type RedisClient } from "../redis/client.js";
import { REVOCATION_TTL_MS, type RevocationKind, type Revocations } from "./revocations.js";
import { MAX_REMEMBERED } from "./revocations.memory.js";

export class RedisRevocations implements Revocations {
  /** What this node revoked; `shared` once Redis has it too (Redis then has the last word). */
  private readonly memory = new ExpiringMap<string, { shared: boolean }>(MAX_REMEMBERED);

  constructor(
    private readonly redis: RedisClient,
    private readonly keyPrefix = "chat",
  ) {}

  private key(kind: RevocationKind, id: string): string {
    return `${this.keyPrefix}:revoked:${kind}:${id}`;
  }

  async revoke(kind: RevocationKind, id: string): Promise<void> {
    const key = this.key(kind, id);
    const entry = { shared: false };
    this.memory.set(key, entry, Date.now() + REVOCATION_TTL_MS);
    if (this.redis.status === "ready") {
      await this.redis.set(key, "1", "EX", REVOCATION_TTL_MS / 1000).then(
        () => {
          entry.shared = true;
        },
        () => {},
      );
    }
  }

  async lift(kind: RevocationKind, id: string): Promise<void> {
    const key = this.key(kind, id);
    this.memory.delete(key);
    await this.redis.del(key);
  }

  async isRevoked(userId: string, sessionId: string | null): Promise<boolean> {
    return (await this.revoked(userId, sessionId)) !== undefined;
  }

  async revoked(userId: string, sessionId: string | null): Promise<RevocationKind | undefined> {
    const keys: [RevocationKind, string][] = [["user", this.key("user", userId)]];
    if (sessionId) keys.push(["session", this.key("session", sessionId)]);
    const local = keys.map(([kind, key]) => [kind, this.memory.get(key)] as const);
    // What Redis never got (it was away when this node revoked) only this node knows.
    const unshared = local.find(([, entry]) => entry && !entry.shared);
    if (unshared) return unshared[0];
    if (this.redis.status === "ready") {
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

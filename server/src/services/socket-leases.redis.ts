/**
 * Socket leases shared by the nodes: a Redis sorted set per user of leases (socket id →
 * expiry), added atomically when under the cap, renewed by the node holding the socket,
 * removed on disconnect. A crashed node's leases lapse after LEASE_MS. While Redis is down,
 * each node counts only its own sockets. One key per user, so it works unchanged on a Redis
 * Cluster (renewals are sent per key there: a cluster pipeline must stay within one slot).
 */
import { isCluster, type RedisClient } from "../redis/client.js";
import { MemorySocketLeases } from "./socket-leases.memory.js";

/** How long a socket lease lives without renewal; renewed every third of it. */
export const LEASE_MS = 90_000;

// Atomically: drop lapsed leases, refuse past the cap, add the lease. Returns 1 if added.
const ACQUIRE = `
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1`;

export class RedisSocketLeases extends MemorySocketLeases {
  private readonly renewTimer: NodeJS.Timeout;

  constructor(
    max: number,
    private readonly redis: RedisClient,
    private readonly keyPrefix = "chat",
  ) {
    super(max);
    this.renewTimer = setInterval(() => void this.renew(), LEASE_MS / 3);
    this.renewTimer.unref();
  }

  private key(userId: string): string {
    return `${this.keyPrefix}:sockets:${userId}`;
  }

  override async confirm(userId: string, socketId: string): Promise<boolean> {
    if (this.redis.status !== "ready") return true;
    try {
      const now = Date.now();
      const added = await this.redis.eval(
        ACQUIRE,
        1,
        this.key(userId),
        now,
        now + LEASE_MS,
        socketId,
        this.max,
        LEASE_MS * 2,
      );
      if (added !== 1) {
        this.release(userId, socketId);
        return false;
      }
    } catch {
      // Redis went away mid-way: this node's own count (reserve) still applies.
    }
    return true;
  }

  override release(userId: string, socketId: string): void {
    super.release(userId, socketId);
    if (this.redis.status === "ready") {
      this.redis.zrem(this.key(userId), socketId).catch(() => {});
    }
  }

  /** Renews this node's leases so that they lapse only if the node dies. */
  async renew(): Promise<void> {
    if (this.redis.status !== "ready" || this.open.size === 0) return;
    const expiry = Date.now() + LEASE_MS;
    const redis = this.redis;
    if (isCluster(redis)) {
      // A cluster pipeline must stay within one slot; each user's key is its own slot. The
      // commands are sent together anyway (ioredis batches what goes to one node).
      const renewals: Promise<unknown>[] = [];
      for (const [userId, sockets] of this.open) {
        const key = this.key(userId);
        for (const id of sockets) renewals.push(redis.zadd(key, "XX", expiry, id));
        renewals.push(redis.pexpire(key, LEASE_MS * 2));
      }
      await Promise.allSettled(renewals);
      return;
    }
    const pipeline = redis.pipeline();
    for (const [userId, sockets] of this.open) {
      for (const id of sockets) pipeline.zadd(this.key(userId), "XX", expiry, id);
      pipeline.pexpire(this.key(userId), LEASE_MS * 2);
    }
    await pipeline.exec().catch(() => {});
  }

  override close(): void {
    clearInterval(this.renewTimer);
  }
}

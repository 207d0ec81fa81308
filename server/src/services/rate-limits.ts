/**
 * Per-user limits, cluster-wide through Redis when there is one:
 * - message rate and connection attempts: rate-limiter-flexible, falling back to this node's
 *   memory while Redis is down;
 * - open sockets: a Redis sorted set per user of leases (socket id → expiry), added atomically
 *   when under the cap, renewed by the node holding the socket, removed on disconnect. A
 *   crashed node's leases lapse after LEASE_MS. While Redis is down, each node counts only its
 *   own sockets.
 */
import type { Redis } from "ioredis";
import { RateLimiterMemory, RateLimiterRedis, RateLimiterRes } from "rate-limiter-flexible";
import { ErrorCode } from "../../../protocol/constants.js";
import { AppError } from "./errors.js";

export interface RateLimitConfig {
  /** Messages a user may send per window, across all their devices and nodes. */
  messagesPerWindow: number;
  /** Length of the message window, in seconds. */
  messageWindowSeconds: number;
  /** Connection attempts a user may make per minute, across all nodes. */
  connectionsPerMinute: number;
  /** Sockets one user may hold open across all nodes. */
  maxSocketsPerUser: number;
}

function limiter(points: number, duration: number, keyPrefix: string, redis?: Redis) {
  const memory = new RateLimiterMemory({ points, duration, keyPrefix });
  if (!redis) return memory;
  return new RateLimiterRedis({
    storeClient: redis,
    points,
    duration,
    keyPrefix,
    rejectIfRedisNotReady: true,
    insuranceLimiter: memory,
  });
}

/** How long a socket lease lives without renewal; renewed every third of it. */
const LEASE_MS = 90_000;

// Atomically: drop lapsed leases, refuse past the cap, add the lease. Returns 1 if added.
const ACQUIRE = `
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1`;

export class RateLimits {
  private readonly messages;
  private readonly connections;
  /** This node's open sockets, by user. */
  private readonly open = new Map<string, Set<string>>();
  private readonly renewTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly config: RateLimitConfig,
    private readonly redis?: Redis,
    private readonly keyPrefix = "chat",
  ) {
    this.messages = limiter(
      config.messagesPerWindow,
      config.messageWindowSeconds,
      `${keyPrefix}:rl:msg`,
      redis,
    );
    this.connections = limiter(config.connectionsPerMinute, 60, `${keyPrefix}:rl:conn`, redis);
    if (redis) {
      this.renewTimer = setInterval(() => void this.renewLeases(), LEASE_MS / 3);
      this.renewTimer.unref();
    }
  }

  private leaseKey(userId: string): string {
    return `${this.keyPrefix}:sockets:${userId}`;
  }

  /** Counts one message; throws RATE_LIMITED (with retryAfterMs) past the limit. */
  async consumeMessage(userId: string): Promise<void> {
    try {
      await this.messages.consume(userId);
    } catch (e) {
      if (e instanceof RateLimiterRes) {
        throw new AppError(ErrorCode.RATE_LIMITED, "Too many messages; slow down", {
          retryAfterMs: Math.max(1, Math.ceil(e.msBeforeNext)),
        });
      }
      throw e;
    }
  }

  /**
   * Counts a connection attempt and takes one of the user's socket slots for `socketId`.
   * Returns the milliseconds to wait when refused, or 0 when accepted (then `release` must
   * follow, on disconnect).
   */
  async acquireConnection(userId: string, socketId: string): Promise<number> {
    const local = this.open.get(userId) ?? new Set<string>();
    if (local.size >= this.config.maxSocketsPerUser) return 1000;
    local.add(socketId); // reserved before the awaits, so concurrent attempts count
    this.open.set(userId, local);
    try {
      await this.connections.consume(userId);
    } catch (e) {
      this.release(userId, socketId);
      if (e instanceof RateLimiterRes) return Math.max(1, Math.ceil(e.msBeforeNext));
      throw e;
    }
    if (this.redis?.status === "ready") {
      try {
        const now = Date.now();
        const added = await this.redis.eval(
          ACQUIRE,
          1,
          this.leaseKey(userId),
          now,
          now + LEASE_MS,
          socketId,
          this.config.maxSocketsPerUser,
          LEASE_MS * 2,
        );
        if (added !== 1) {
          this.release(userId, socketId);
          return 5000;
        }
      } catch {
        // Redis went away mid-way: this node's own count (above) still applies.
      }
    }
    return 0;
  }

  release(userId: string, socketId: string): void {
    const local = this.open.get(userId);
    local?.delete(socketId);
    if (local?.size === 0) this.open.delete(userId);
    if (this.redis?.status === "ready") {
      this.redis.zrem(this.leaseKey(userId), socketId).catch(() => {});
    }
  }

  /** Renews this node's leases so that they lapse only if the node dies. */
  private async renewLeases(): Promise<void> {
    if (this.redis?.status !== "ready" || this.open.size === 0) return;
    const expiry = Date.now() + LEASE_MS;
    const pipeline = this.redis.pipeline();
    for (const [userId, sockets] of this.open) {
      for (const id of sockets) pipeline.zadd(this.leaseKey(userId), "XX", expiry, id);
      pipeline.pexpire(this.leaseKey(userId), LEASE_MS * 2);
    }
    await pipeline.exec().catch(() => {});
  }

  /** Stops renewing (shutdown). The node's leases are released by the disconnects. */
  close(): void {
    if (this.renewTimer) clearInterval(this.renewTimer);
  }
}

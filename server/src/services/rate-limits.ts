/**
 * Per-user limits. Message rate and connection attempts are counted cluster-wide in Redis when
 * there is one (rate-limiter-flexible), falling back to this node's memory while Redis is
 * down. Concurrent connections are capped per node.
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
  /** Sockets one user may hold open on one node. */
  maxSocketsPerNode: number;
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

export class RateLimits {
  private readonly messages;
  private readonly connections;
  private readonly open = new Map<string, number>();

  constructor(
    private readonly config: RateLimitConfig,
    redis?: Redis,
    keyPrefix = "chat",
  ) {
    this.messages = limiter(
      config.messagesPerWindow,
      config.messageWindowSeconds,
      `${keyPrefix}:rl:msg`,
      redis,
    );
    this.connections = limiter(config.connectionsPerMinute, 60, `${keyPrefix}:rl:conn`, redis);
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
   * Counts a connection attempt and reserves one of the user's sockets on this node. Returns
   * the milliseconds to wait when refused, or 0 when accepted (then `release` must follow).
   */
  async acquireConnection(userId: string): Promise<number> {
    const open = this.open.get(userId) ?? 0;
    if (open >= this.config.maxSocketsPerNode) return 1000;
    this.open.set(userId, open + 1); // reserved before the await, so concurrent attempts count
    try {
      await this.connections.consume(userId);
      return 0;
    } catch (e) {
      this.release(userId);
      if (e instanceof RateLimiterRes) return Math.max(1, Math.ceil(e.msBeforeNext));
      throw e;
    }
  }

  release(userId: string): void {
    const n = (this.open.get(userId) ?? 1) - 1;
    if (n <= 0) this.open.delete(userId);
    else this.open.set(userId, n);
  }
}

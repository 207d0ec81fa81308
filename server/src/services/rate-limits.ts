/**
 * Limits against floods, cluster-wide through Redis when there is one:
 * - connection attempts per client address (checked at the WebSocket handshake, before the
 *   token is verified), connection attempts per user, and every write a user can make
 *   (messages, chat creates, chat renames and deletes) per user, with limits by subscription
 *   tier: rate-limiter-flexible, falling back to this node's memory while Redis is down; every
 *   entry expires with its window;
 * - open sockets per user: SocketLeases (socket-leases.ts; a memory and a Redis implementation,
 *   a file each);
 * - commands per socket: a token bucket held by the socket itself (CommandBucket), so it needs
 *   no shared state and goes away with the socket.
 */

import { RateLimiterMemory, RateLimiterRedis, RateLimiterRes } from "rate-limiter-flexible";
import { ErrorCode } from "../../../protocol/constants.js";
import type { RedisClient } from "../redis/client.js";
import { AppError } from "./errors.js";
import { createSocketLeases, type SocketLeases } from "./socket-leases.js";

/** A user's writes, each limited per user (across devices and nodes) by subscription tier. */
export type WriteKind = "message" | "chatCreate" | "chatEdit";

/** The per-user write limits of one subscription tier. */
export interface TierLimits {
  /** `message:send` per message window (RateLimitConfig.messageWindowSeconds). */
  messages: number;
  /** `chat:create` per minute. */
  chatCreates: number;
  /** `chat:rename` and `chat:delete` together, per minute. */
  chatEdits: number;
}

/**
 * The built-in tiers beyond `free`, as multiples of the free limits: paying users may write
 * more, and raising the free limits raises theirs. A tier named in RateLimitConfig.tiers
 * overrides any of its fields; any other tier (or none) is `free`.
 */
export const TIER_MULTIPLIERS: Readonly<Record<string, number>> = { pro: 4, enterprise: 10 };

/** The window of the chat write limits, in seconds. */
const CHAT_WINDOW_SECONDS = 60;

export interface RateLimitConfig {
  /** Messages a user of the free tier may send per window, across all their devices and nodes. */
  messagesPerWindow: number;
  /** Chats a user of the free tier may create per minute, across all their devices and nodes. */
  chatCreatesPerMinute: number;
  /** Renames and deletes a user of the free tier may make per minute, together. */
  chatEditsPerMinute: number;
  /**
   * Limits by subscription tier (`users.subscription_tier`, lower case), each field optional:
   * overrides the defaults (free: the three fields above; pro and enterprise: multiples of
   * free, TIER_MULTIPLIERS). A tier not named here nor built in is free.
   */
  tiers?: Record<string, Partial<TierLimits>> | undefined;
  /** Length of the message window, in seconds. */
  messageWindowSeconds: number;
  /** Connection attempts a user may make per minute, across all nodes. */
  connectionsPerMinute: number;
  /** Sockets one user may hold open across all nodes. */
  maxSocketsPerUser: number;
  /** Connection attempts one client address may make per window, across all nodes. */
  connectionsPerAddressPerMinute: number;
  /** Length of that window in seconds; default 60 (tests shorten it to watch entries expire). */
  addressWindowSeconds?: number | undefined;
  /** Commands one socket may send per second, on average. */
  commandsPerSecond: number;
  /** Commands one socket may send at once (the bucket's size). */
  commandBurst: number;
}

function limiter(
  points: number,
  duration: number,
  keyPrefix: string,
  redis?: RedisClient,
  options: { shieldRedis?: boolean } = {},
) {
  const memory = new RateLimiterMemory({ points, duration, keyPrefix });
  if (!redis) return { limiter: memory, memory };
  const store = new RateLimiterRedis({
    storeClient: redis,
    points,
    duration,
    keyPrefix,
    rejectIfRedisNotReady: true,
    insuranceLimiter: memory,
    // A key that used up its points is refused from memory until its window ends, so a flood
    // does not become a flood of Redis round trips.
    ...(options.shieldRedis ? { inMemoryBlockOnConsumed: points } : {}),
  });
  return { limiter: store, memory };
}

/** What a limiter keeps in this node's memory (rate-limiter-flexible's storage map). */
function memoryKeys(memory: RateLimiterMemory): number {
  const storage = (memory as unknown as { _memoryStorage?: { _storage?: Map<string, unknown> } })
    ._memoryStorage?._storage;
  return storage?.size ?? 0;
}

/** The outcome of CommandBucket.take(). */
export type CommandVerdict =
  | { allowed: true }
  | {
      allowed: false;
      /** Milliseconds until a command would be allowed again. */
      retryAfterMs: number;
      /** The socket went on sending a whole burst while refused: disconnect it. */
      flooding: boolean;
    };

/**
 * A token bucket for one socket's commands: `burst` at once, then `ratePerSecond`. A refused
 * command still costs a token, so the balance goes negative: a client that honours
 * `retryAfterMs` stays close to zero, while one that keeps sending another full burst while
 * refused reaches `-burst` and is reported as flooding.
 */
export class CommandBucket {
  private tokens: number;
  private last = performance.now();

  constructor(
    private readonly ratePerSecond: number,
    private readonly burst: number,
  ) {
    this.tokens = burst;
  }

  take(): CommandVerdict {
    const now = performance.now();
    this.tokens = Math.min(
      this.burst,
      this.tokens + ((now - this.last) / 1000) * this.ratePerSecond,
    );
    this.last = now;
    if (this.tokens >= 1) {
      this.tokens -= 1;
      return { allowed: true };
    }
    this.tokens = Math.max(-this.burst, this.tokens - 1);
    return {
      allowed: false,
      retryAfterMs: Math.max(1, Math.ceil(((1 - this.tokens) / this.ratePerSecond) * 1000)),
      flooding: this.tokens <= -this.burst,
    };
  }
}

const WRITE_REFUSALS: Record<WriteKind, string> = {
  message: "Too many messages; slow down",
  chatCreate: "Too many chats created; slow down",
  chatEdit: "Too many chat renames or deletes; slow down",
};

/** The limits of every tier: the free limits, the built-in multiples, then the overrides. */
export function resolveTiers(config: RateLimitConfig): Map<string, TierLimits> {
  const overrides = new Map(
    Object.entries(config.tiers ?? {}).map(([name, limits]) => [name.toLowerCase(), limits]),
  );
  const free: TierLimits = {
    messages: config.messagesPerWindow,
    chatCreates: config.chatCreatesPerMinute,
    chatEdits: config.chatEditsPerMinute,
    ...overrides.get("free"),
  };
  const table = new Map<string, TierLimits>([["free", free]]);
  for (const [name, factor] of Object.entries(TIER_MULTIPLIERS)) {
    table.set(name, {
      messages: free.messages * factor,
      chatCreates: free.chatCreates * factor,
      chatEdits: free.chatEdits * factor,
    });
  }
  for (const [name, limits] of overrides) {
    table.set(name, { ...(table.get(name) ?? free), ...limits });
  }
  return table;
}

type Limiter = ReturnType<typeof limiter>;

export class RateLimits {
  /** Per-user write limiters, by `${kind}:${tier}`, made on first use. */
  private readonly writes = new Map<string, Limiter>();
  private readonly tiers: Map<string, TierLimits>;
  private readonly connections;
  private readonly addresses;
  /** Open sockets per user (this node's, and every node's when shared). */
  private readonly leases: SocketLeases;

  constructor(
    private readonly config: RateLimitConfig,
    private readonly redis?: RedisClient,
    private readonly keyPrefix = "chat",
  ) {
    this.tiers = resolveTiers(config);
    this.connections = limiter(config.connectionsPerMinute, 60, `${keyPrefix}:rl:conn`, redis);
    this.addresses = limiter(
      config.connectionsPerAddressPerMinute,
      config.addressWindowSeconds ?? 60,
      `${keyPrefix}:rl:ip`,
      redis,
      { shieldRedis: true },
    );
    this.leases = createSocketLeases(config.maxSocketsPerUser, redis, keyPrefix);
  }

  /** The tier whose limits apply to `subscriptionTier`: itself if known, else free. */
  tierOf(subscriptionTier: string | null | undefined): string {
    const name = subscriptionTier?.trim().toLowerCase() ?? "free";
    return this.tiers.has(name) ? name : "free";
  }

  /** The write limits of `subscriptionTier` (free for an unknown or missing tier). */
  limitsFor(subscriptionTier: string | null | undefined): TierLimits {
    return this.tiers.get(this.tierOf(subscriptionTier)) ?? (this.tiers.get("free") as TierLimits);
  }

  private writeLimiter(kind: WriteKind, tier: string): Limiter {
    const key = `${kind}:${tier}`;
    let found = this.writes.get(key);
    if (!found) {
      const limits = this.limitsFor(tier);
      const [points, window] =
        kind === "message"
          ? [limits.messages, this.config.messageWindowSeconds]
          : [kind === "chatCreate" ? limits.chatCreates : limits.chatEdits, CHAT_WINDOW_SECONDS];
      found = limiter(points, window, `${this.keyPrefix}:rl:${kind}:${tier}`, this.redis);
      this.writes.set(key, found);
    }
    return found;
  }

  /**
   * Counts one write of a user (`userId`: the Clerk id, so the count is the same on every node)
   * against the limits of their tier; throws RATE_LIMITED (with retryAfterMs) past the limit.
   */
  async consumeWrite(
    user: { userId: string; subscriptionTier?: string | null | undefined },
    kind: WriteKind,
  ): Promise<void> {
    try {
      await this.writeLimiter(kind, this.tierOf(user.subscriptionTier)).limiter.consume(
        user.userId,
      );
    } catch (e) {
      if (e instanceof RateLimiterRes) {
        throw new AppError(ErrorCode.RATE_LIMITED, WRITE_REFUSALS[kind], {
          retryAfterMs: Math.max(1, Math.ceil(e.msBeforeNext)),
        });
      }
      throw e;
    }
  }

  /**
   * Counts a connection attempt from a client address (see socket/client-address.ts). Returns
   * the milliseconds to wait when refused, or 0 when allowed.
   */
  async consumeAddress(address: string): Promise<number> {
    try {
      await this.addresses.limiter.consume(address);
      return 0;
    } catch (e) {
      if (e instanceof RateLimiterRes) return Math.max(1, Math.ceil(e.msBeforeNext));
      throw e;
    }
  }

  /** A fresh command bucket for one socket. */
  commandBucket(): CommandBucket {
    return new CommandBucket(this.config.commandsPerSecond, this.config.commandBurst);
  }

  /**
   * What the limits hold in this node's memory, for tests and diagnostics: limiter entries
   * (each expires with its window; with Redis they live there and these stay empty unless
   * Redis is down) and users with open sockets (removed on their last disconnect).
   */
  memoryUse(): { limiterKeys: number; usersWithSockets: number } {
    return {
      limiterKeys:
        [...this.writes.values()].reduce((sum, l) => sum + memoryKeys(l.memory), 0) +
        memoryKeys(this.connections.memory) +
        memoryKeys(this.addresses.memory),
      usersWithSockets: this.leases.usersWithSockets(),
    };
  }

  /**
   * Counts a connection attempt and takes one of the user's socket slots for `socketId`.
   * Returns the milliseconds to wait when refused, or 0 when accepted (then `release` must
   * follow, on disconnect).
   */
  async acquireConnection(userId: string, socketId: string): Promise<number> {
    // Reserved before the awaits, so concurrent attempts count.
    if (!this.leases.reserve(userId, socketId)) return 1000;
    try {
      await this.connections.limiter.consume(userId);
    } catch (e) {
      this.release(userId, socketId);
      if (e instanceof RateLimiterRes) return Math.max(1, Math.ceil(e.msBeforeNext));
      throw e;
    }
    return (await this.leases.confirm(userId, socketId)) ? 0 : 5000;
  }

  release(userId: string, socketId: string): void {
    this.leases.release(userId, socketId);
  }

  /** Stops renewing (shutdown). The node's leases are released by the disconnects. */
  close(): void {
    this.leases.close();
  }
}

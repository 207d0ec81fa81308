/**
 * Open sockets per user, for the per-user socket cap (MAX_SOCKETS_PER_USER). One interface,
 * one implementation per backend: MemorySocketLeases (this node's sockets only,
 * socket-leases.memory.ts) and RedisSocketLeases (every node's, through Redis or a Redis
 * Cluster, socket-leases.redis.ts).
 */
import type { RedisClient } from "../redis/client.js";
import { MemorySocketLeases } from "./socket-leases.memory.js";
import { RedisSocketLeases } from "./socket-leases.redis.js";

export interface SocketLeases {
  /**
   * Reserves a slot of the user's on this node, synchronously (so that concurrent handshakes
   * count): false when this node alone holds `max` of the user's sockets.
   */
  reserve(userId: string, socketId: string): boolean;
  /**
   * Confirms the reserved slot against every node's sockets: false (and released) past the
   * cap. A store that cannot reach its backend keeps this node's count.
   */
  confirm(userId: string, socketId: string): Promise<boolean>;
  /** Gives the slot back (disconnect, or a refused handshake). */
  release(userId: string, socketId: string): void;
  /** Users with sockets on this node (diagnostics; entries go with the last socket). */
  usersWithSockets(): number;
  /** Stops background work (shutdown). */
  close(): void;
}

/** The leases of this node: shared through `redis` when there is one, else this node's only. */
export function createSocketLeases(
  max: number,
  redis?: RedisClient,
  keyPrefix = "chat",
): SocketLeases {
  return redis ? new RedisSocketLeases(max, redis, keyPrefix) : new MemorySocketLeases(max);
}

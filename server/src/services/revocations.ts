/**
 * Clerk sessions that were revoked and users that were deleted, remembered for longer than any
 * token they held can live, so that such a token cannot open a new socket (or refresh one)
 * after the webhook disconnected it. One interface, one implementation per backend:
 * MemoryRevocations (one node, revocations.memory.ts) and RedisRevocations (shared by the
 * nodes through Redis or a Redis Cluster, revocations.redis.ts). (A deleted user's tombstone in
 * Postgres is the durable record; this is what a node checks without a database round trip,
 * and what keeps a deleted user out of a node that still knows them: see DEFAULT_KNOWN_TTL_MS.)
 */
import type { RedisClient } from "../redis/client.js";
import { MemoryRevocations } from "./revocations.memory.js";
import { RedisRevocations } from "./revocations.redis.js";

/** Longer than a Clerk session token's life (60 s) plus clock skew and the refresh grace. */
export const REVOCATION_TTL_MS = 600_000;

/** What was revoked: the user (deleted) or the Clerk session. */
export type RevocationKind = "user" | "session";

export interface Revocations {
  /** Remembers the revocation for REVOCATION_TTL_MS, on every node when shared. */
  revoke(kind: RevocationKind, id: string): Promise<void>;
  /**
   * Ends a revocation on every node (Clerk created a deleted user again). Rejects when the
   * shared store did not take it, so that the caller fails and the webhook is retried.
   */
  lift(kind: RevocationKind, id: string): Promise<void>;
  /** What of the two was revoked recently: the user (first), the session, or neither. */
  revoked(userId: string, sessionId: string | null): Promise<RevocationKind | undefined>;
  /** True when the user was deleted or the session revoked recently. */
  isRevoked(userId: string, sessionId: string | null): Promise<boolean>;
}

/** The store for this node: shared through `redis` when there is one, else this node's memory. */
export function createRevocations(redis?: RedisClient, keyPrefix = "chat"): Revocations {
  return redis ? new RedisRevocations(redis, keyPrefix) : new MemoryRevocations();
}

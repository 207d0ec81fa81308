import type { UserStats } from "../../../protocol/index.js";
import { ExpiringMap } from "../expiring-map.js";
import type {
  DeletionResult,
  ProfileResult,
  UserRepository,
  UserStatsRow,
} from "../repositories/user.repository.js";
import type { Actor } from "./actor.js";
import { AppError, ErrorCode, notFound } from "./errors.js";
import { toUserStats } from "./mappers.js";
import { REVOCATION_TTL_MS } from "./revocations.js";

/**
 * The largest `token_usage` the service accepts: beyond it a JSON number (and so every client
 * of the API and the protocol's `UserStats.tokenUsage`) can no longer be exact. The column is a
 * bigint, so the database itself could hold more.
 */
export const MAX_TOKEN_USAGE = Number.MAX_SAFE_INTEGER;

/** The stats of a user who has no row (never connected, or deleted). */
const NO_STATS: UserStats = {
  totalConversations: 0,
  totalSearches: 0,
  messageCount: 0,
  tokenUsage: 0,
  subscriptionTier: null,
  subscriptionStatus: null,
};

const toStatsOrZero = (row: UserStatsRow | undefined) => (row ? toUserStats(row) : NO_STATS);

/** Most users whose last_seen_at one statement writes. */
const MAX_SEEN_PER_FLUSH = 5000;
/** Most new users one provisioning statement creates (Postgres takes 65,535 parameters). */
const MAX_NEW_PER_STATEMENT = 1000;

interface Waiter {
  /** The user's row, or undefined when they were deleted (a tombstone). */
  resolve(user: ProvisionedUser | undefined): void;
  reject(err: unknown): void;
}

/**
 * How long a node trusts a known user's row id without asking the database: 5 minutes.
 * A node that knows a user does not see their tombstone, so a deleted user is kept out of it by
 * their revocation (Revocations, REVOCATION_TTL_MS), which must outlive every entry: an entry is
 * only made by a provisioning that saw no tombstone, so before the deletion.
 */
export const DEFAULT_KNOWN_TTL_MS = 5 * 60_000;

/** How provisioning remembers users it has seen (see `UserService.provision`). */
export interface ProvisionOptions {
  /**
   * Milliseconds a known user's row id is trusted without asking the database; default
   * DEFAULT_KNOWN_TTL_MS. Must be shorter than REVOCATION_TTL_MS (refused otherwise).
   */
  knownTtlMs?: number;
  /** Most users remembered; the oldest are forgotten first. Default 100,000 (a few MB). */
  maxKnown?: number;
  /** Milliseconds between the coalesced `last_seen_at` writes. Default 1000. */
  seenFlushMs?: number;
}

/** What provisioning returns: the user's row id and subscription tier. */
export interface ProvisionedUser {
  dbUserId: string;
  subscriptionTier: string | null;
}

export class UserService {
  /** Clerk id → row id and tier, trusted for knownTtlMs. */
  private readonly known: ExpiringMap<string, ProvisionedUser>;
  /** Known users seen since the last flush. */
  private readonly seen = new Set<string>();
  private flushTimer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> | undefined;
  private readonly knownTtlMs: number;
  private readonly seenFlushMs: number;
  /** New users waiting for their row, each with the handshakes waiting on it. */
  private readonly pendingNew = new Map<string, Waiter[]>();
  /** Whether a provisioning statement is running or scheduled (one at a time). */
  private provisioningBusy = false;

  constructor(
    private readonly users: UserRepository,
    options: ProvisionOptions = {},
  ) {
    this.knownTtlMs = options.knownTtlMs ?? DEFAULT_KNOWN_TTL_MS;
    if (!(this.knownTtlMs < REVOCATION_TTL_MS)) {
      throw new RangeError(
        `knownTtlMs must be shorter than a deleted user's revocation (${REVOCATION_TTL_MS} ms)`,
      );
    }
    this.known = new ExpiringMap(options.maxKnown ?? 100_000);
    this.seenFlushMs = options.seenFlushMs ?? 1000;
  }

  /**
   * Called on every authenticated connection. The first connection of a user creates their row
   * before it resolves. New users arriving together share one upsert statement, like the
   * write path's group commit: while one statement runs, the next batch gathers, so a burst of
   * first handshakes costs a few statements rather than one round trip (and ~200 µs of query
   * building and protocol work) each. A reconnect of a user this node already knows costs no
   * database round trip: the row id comes from memory and `last_seen_at` is written within `seenFlushMs`, in one
   * statement for every user seen meanwhile. A user whose row is gone by then is forgotten, so
   * their next connection provisions again. Undefined when the user was deleted: a tombstone
   * keeps their row from being created again.
   */
  async provision(clerkId: string): Promise<string | undefined> {
    return (await this.provisionUser(clerkId))?.dbUserId;
  }

  /**
   * `provision`, with the user's subscription tier as of their row's upsert: a known user's
   * tier is the one remembered with their row id, so a tier change reaches this node's
   * connections within knownTtlMs (5 minutes by default). Undefined for a deleted user.
   */
  async provisionUser(clerkId: string): Promise<ProvisionedUser | undefined> {
    const known = this.known.get(clerkId);
    if (known) {
      this.seen.add(clerkId);
      this.scheduleFlush();
      return known;
    }
    const user = await new Promise<ProvisionedUser | undefined>((resolve, reject) => {
      const waiters = this.pendingNew.get(clerkId);
      if (waiters) waiters.push({ resolve, reject });
      else this.pendingNew.set(clerkId, [{ resolve, reject }]);
      this.scheduleProvisioning();
    });
    if (user) this.known.set(clerkId, user, Date.now() + this.knownTtlMs);
    return user;
  }

  /**
   * Runs the next provisioning statement after the current turn of the event loop (so the
   * handshakes that arrived together are in it), unless one is running: then it follows that.
   */
  private scheduleProvisioning(): void {
    if (this.provisioningBusy) return;
    this.provisioningBusy = true;
    setImmediate(() => void this.provisionPending());
  }

  private async provisionPending(): Promise<void> {
    const batch = [...this.pendingNew].slice(0, MAX_NEW_PER_STATEMENT);
    for (const [id] of batch) this.pendingNew.delete(id);
    try {
      const rows = await this.users.upsertSeenMany(batch.map(([id]) => id));
      for (const [id, waiters] of batch) {
        const row = rows.get(id);
        const user = row && { dbUserId: row.id, subscriptionTier: row.subscriptionTier };
        for (const w of waiters) w.resolve(user);
      }
    } catch (err) {
      // The database is away (or refused the statement): each handshake of the batch fails
      // as its own upsert would have.
      for (const [, waiters] of batch) for (const w of waiters) w.reject(err);
    } finally {
      this.provisioningBusy = false;
      if (this.pendingNew.size > 0) this.scheduleProvisioning();
    }
  }

  /** Writes the pending `last_seen_at` updates now. Never rejects: a failure is retried later. */
  flushSeen(): Promise<void> {
    clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    if (this.flushing) return this.flushing;
    if (this.seen.size === 0) return Promise.resolve();
    // Bounded statements: Postgres takes at most 65,535 parameters; the rest go next time.
    const batch = [...this.seen].slice(0, MAX_SEEN_PER_FLUSH);
    for (const id of batch) this.seen.delete(id);
    this.flushing = this.users
      .touchSeen(batch)
      .then((present) => {
        for (const id of batch) if (!present.has(id)) this.known.delete(id);
      })
      .catch(() => {
        // The database is away: keep the users for the next flush (last_seen_at is advisory).
        for (const id of batch) this.seen.add(id);
      })
      .finally(() => {
        this.flushing = undefined;
        if (this.seen.size > 0) this.scheduleFlush();
      });
    return this.flushing;
  }

  private scheduleFlush(): void {
    this.flushTimer ??= setTimeout(() => void this.flushSeen(), this.seenFlushMs).unref();
  }

  /** Stops the flush timer after writing what is pending (graceful shutdown). */
  async close(): Promise<void> {
    await this.flushSeen();
    await this.flushing;
    clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
  }

  async stats(clerkId: string): Promise<UserStats> {
    const row = await this.users.stats(clerkId);
    return toStatsOrZero(row);
  }

  /** Stats of many users in one query; a user without a row gets zeros, as in `stats`. */
  async statsMany(clerkIds: string[]): Promise<Map<string, UserStats>> {
    const rows = await this.users.statsMany(clerkIds);
    return new Map(clerkIds.map((id) => [id, toStatsOrZero(rows.get(id))]));
  }

  /** The actor for a Clerk user id; NOT_FOUND when the user has no row (never connected, deleted). */
  async requireActor(clerkId: string): Promise<Actor> {
    const dbUserId = await this.users.findId(clerkId);
    if (!dbUserId) throw notFound("User");
    return { userId: clerkId, dbUserId };
  }

  /**
   * Adds `tokens` (a positive integer) to the user's lifetime `token_usage`. Refused with
   * CONFLICT, changing nothing, when the total would pass MAX_TOKEN_USAGE.
   */
  async addTokenUsage(clerkId: string, tokens: number): Promise<{ tokenUsage: number }> {
    if (!Number.isSafeInteger(tokens) || tokens <= 0) {
      throw new AppError(ErrorCode.INVALID_PAYLOAD, "tokens must be a positive safe integer", {
        details: [{ path: "tokens", message: "must be a positive integer" }],
      });
    }
    const result = await this.users.addTokenUsage(clerkId, tokens, MAX_TOKEN_USAGE);
    if (result.ok) return { tokenUsage: result.tokenUsage };
    if (result.reason === "not_found") throw notFound("User");
    throw new AppError(
      ErrorCode.CONFLICT,
      `token_usage would exceed ${MAX_TOKEN_USAGE} (it is ${result.tokenUsage}); nothing was added`,
    );
  }

  /**
   * Applies a Clerk profile event stamped `eventAt` (Clerk's epoch ms): creates or updates the
   * user's email and avatar unless a newer event was applied or the user is deleted. Only a
   * `user.created` newer than the deletion (`created`) brings a deleted user back.
   */
  syncProfile(
    clerkId: string,
    profile: { email: string | null; avatarUrl: string | null },
    eventAt: number,
    created: boolean,
  ): Promise<ProfileResult> {
    return this.users.applyProfile(clerkId, profile, eventAt, created);
  }

  /**
   * Deletes the user for good (Clerk's `user.deleted`, stamped `eventAt`): a tombstone and the
   * row's deletion (chats, messages and searches cascade) in one transaction. Ignored when the
   * user has a newer profile event (they were created again).
   */
  delete(clerkId: string, eventAt: number): Promise<DeletionResult> {
    this.forget(clerkId);
    return this.users.deleteByClerkId(clerkId, eventAt);
  }

  /** Stops trusting what this node remembers about the user (a deletion or a revocation). */
  forget(clerkId: string): void {
    this.known.delete(clerkId);
    this.seen.delete(clerkId);
  }
}

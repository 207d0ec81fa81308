import { eq, sql } from "drizzle-orm";
import type { Database } from "../db/client.js";
import { users } from "../db/schema.js";

/**
 * The class of the per-user advisory lock (`pg_advisory_xact_lock(class, hashtext(clerk_id))`;
 * the two-key form never collides with the migrations' one-key lock; `provision_users` in
 * drizzle/0007_provision_user.sql uses the same). Every statement that may create a user's row
 * holds it (shared for a handshake, exclusive for a webhook), and so does every deletion
 * (exclusive), so a row is only ever created by a statement that started after the last
 * deletion committed, and sees its tombstone. Under READ COMMITTED an `INSERT … WHERE NOT EXISTS (tombstone)` alone
 * is not enough: a deletion that commits while the insert runs deletes nothing (the new row is
 * not visible to it yet), and the insert commits after it. A hash collision only makes two
 * users' writes take turns.
 */
const USER_LOCK_CLASS = 0x75736572; // "user"

/** What applying a Clerk profile event did. */
export type ProfileResult =
  /** Created or updated the row (the event was the newest seen); `lifted` a tombstone first. */
  | { applied: true; id: string; lifted: boolean }
  /** Nothing: the user is deleted (a tombstone), or the row holds a newer event. */
  | { applied: false; reason: "deleted" | "stale" };

/** What applying a Clerk deletion did. */
export type DeletionResult =
  /** Tombstone written; `deleted` says whether there was a row to delete. */
  | { applied: true; deleted: boolean }
  /** Nothing: the row holds a profile event newer than the deletion (the user was created again). */
  | { applied: false };

/** An epoch-milliseconds time as a timestamptz parameter (exact: ISO text keeps milliseconds). */
const at = (epochMs: number) => sql`${new Date(epochMs).toISOString()}::timestamptz`;

/** Stats as `get_user_stats` returns them. */
export type UserStatsRow = {
  total_conversations: number;
  total_searches: number;
  message_count: number;
  token_usage: string | number;
  subscription_tier: string | null;
  subscription_status: string | null;
};

/** What adding tokens did: the new total, or why nothing changed. */
export type TokenUsageResult =
  | { ok: true; tokenUsage: number }
  | { ok: false; reason: "not_found" }
  | { ok: false; reason: "overflow"; tokenUsage: number };

export class UserRepository {
  constructor(private readonly db: Database) {}

  /**
   * Creates the rows of users seen for the first time, or records that they were seen, in one
   * statement (the first handshakes a node takes at the same time). Returns Clerk id → row id
   * and subscription tier (which picks the user's rate limits); a deleted user (a tombstone) is
   * missing from the result: their row is never recreated. The function takes each user's lock
   * (shared) before its insert (migration 0007), in sorted order, so two nodes creating
   * overlapping sets never deadlock.
   */
  async upsertSeenMany(
    clerkIds: string[],
  ): Promise<Map<string, { id: string; subscriptionTier: string | null }>> {
    // One jsonb parameter, not one parameter per user: building and encoding the statement
    // costs the node less than half as much per user (the query builder and the driver handle
    // one value, not a hundred). Not a text[] parameter: the driver sends arrays as text
    // without its type lookup (db/client.ts). The function sorts and de-duplicates for its locks.
    const ids = JSON.stringify([...new Set(clerkIds)].sort());
    const rows = await this.db.execute<{ clerk_id: string; user_id: string; tier: string | null }>(
      sql`select clerk_id, user_id, tier from public.provision_users(
            array(select jsonb_array_elements_text(${ids}::jsonb)))`,
    );
    return new Map(rows.map((r) => [r.clerk_id, { id: r.user_id, subscriptionTier: r.tier }]));
  }

  /**
   * Records that these users were seen, in one statement. Returns the Clerk ids that still have
   * a row (a user deleted meanwhile is missing from the result).
   */
  async touchSeen(clerkIds: string[]): Promise<Set<string>> {
    // The ids as one jsonb value: one statement shape whatever their number (db/client.ts).
    const rows = await this.db.execute<{ clerk_id: string }>(sql`
      update public.users set last_seen_at = now()
       where clerk_id in (select jsonb_array_elements_text(${JSON.stringify(clerkIds)}::jsonb))
      returning clerk_id`);
    return new Set(rows.map((r) => r.clerk_id));
  }

  /**
   * `get_user_stats` for many users in one statement (the stats broadcasts of a busy node).
   * Users without a row are missing from the result.
   */
  async statsMany(clerkIds: string[]): Promise<Map<string, UserStatsRow>> {
    // The ids as one jsonb parameter: one statement whatever their number, prepared once per
    // connection (a parameter per id made each count of users a statement of its own, parsed
    // and described again), and no array type (db/client.ts).
    const rows = await this.db.execute<UserStatsRow & { clerk_id: string }>(sql`
      select c.clerk_id, s.*
        from jsonb_array_elements_text(${JSON.stringify(clerkIds)}::jsonb) as c(clerk_id),
             lateral public.get_user_stats(c.clerk_id) s`);
    return new Map(rows.map(({ clerk_id, ...stats }) => [clerk_id, stats]));
  }

  /** The seed's `get_user_stats`; undefined when the user has no row. */
  async stats(clerkId: string): Promise<UserStatsRow | undefined> {
    const rows = await this.db.execute<UserStatsRow>(
      sql`select * from public.get_user_stats(${clerkId})`,
    );
    return rows[0];
  }

  /** The `users` row id of a Clerk user, if they have a row. */
  async findId(clerkId: string): Promise<string | undefined> {
    const [row] = await this.db
      .select({ id: users.id })
      .from(users)
      .where(eq(users.clerkId, clerkId));
    return row?.id;
  }

  /**
   * Applies a Clerk profile event (`user.created`, `user.updated`) stamped `eventAt` (epoch ms):
   * creates or updates the row's email and avatar, unless the row holds a newer event or the
   * user is deleted. With `lift` (a `user.created`), a tombstone older than the event goes
   * first: Clerk created the user again. The same event again changes nothing (a redelivery).
   */
  async applyProfile(
    clerkId: string,
    profile: { email: string | null; avatarUrl: string | null },
    eventAt: number,
    lift: boolean,
  ): Promise<ProfileResult> {
    return this.db.transaction(async (tx) => {
      await tx.execute(sql`select pg_advisory_xact_lock(${USER_LOCK_CLASS}, hashtext(${clerkId}))`);
      // The row comes back under its old id, which nodes that still know the user remember.
      const [lifted] = lift
        ? await tx.execute<{ user_id: string | null }>(sql`
            delete from public.user_tombstones
             where clerk_id = ${clerkId} and event_at < ${at(eventAt)}
            returning user_id`)
        : [];
      const [row] = await tx.execute<{ id: string }>(sql`
        insert into public.users (id, clerk_id, email, avatar_url, profile_event_at)
        select coalesce(${lifted?.user_id ?? null}::uuid, gen_random_uuid()), ${clerkId},
               ${profile.email}, ${profile.avatarUrl}, ${at(eventAt)}
         where not exists (select 1 from public.user_tombstones where clerk_id = ${clerkId})
        on conflict (clerk_id) do update
           set email = excluded.email, avatar_url = excluded.avatar_url,
               profile_event_at = excluded.profile_event_at
         where users.profile_event_at is null
            or users.profile_event_at <= excluded.profile_event_at
        returning id`);
      if (row) return { applied: true, id: row.id, lifted: lifted !== undefined };
      const [tombstone] = await tx.execute(
        sql`select 1 from public.user_tombstones where clerk_id = ${clerkId}`,
      );
      return { applied: false, reason: tombstone ? "deleted" : "stale" };
    });
  }

  /**
   * Applies a Clerk `user.deleted` stamped `eventAt` (epoch ms), in one transaction: writes the
   * tombstone (keeping the newest event time) and deletes the row (chats, messages and searches
   * cascade). Changes nothing when the row holds a newer profile event: the user was created
   * again after this deletion, which is a late redelivery.
   */
  async deleteByClerkId(clerkId: string, eventAt: number): Promise<DeletionResult> {
    return this.db.transaction(async (tx) => {
      await tx.execute(sql`select pg_advisory_xact_lock(${USER_LOCK_CLASS}, hashtext(${clerkId}))`);
      const [newer] = await tx.execute(sql`
        select 1 from public.users
         where clerk_id = ${clerkId} and profile_event_at > ${at(eventAt)}`);
      if (newer) return { applied: false };
      await tx.execute(sql`
        insert into public.user_tombstones (clerk_id, event_at, user_id)
        values (${clerkId}, ${at(eventAt)},
                (select id from public.users where clerk_id = ${clerkId}))
        on conflict (clerk_id) do update
           set event_at = greatest(user_tombstones.event_at, excluded.event_at),
               user_id = coalesce(user_tombstones.user_id, excluded.user_id)`);
      const rows = await tx
        .delete(users)
        .where(eq(users.clerkId, clerkId))
        .returning({ id: users.id });
      return { applied: true, deleted: rows.length > 0 };
    });
  }

  /**
   * Adds `tokens` to `token_usage` in one statement, unless the total would pass `max` (then
   * nothing changes). `tokens` is sent as text and cast, so no precision is lost on the way.
   */
  async addTokenUsage(clerkId: string, tokens: number, max: number): Promise<TokenUsageResult> {
    const amount = String(tokens);
    const updated = await this.db.execute<{ token_usage: string }>(sql`
      update public.users
         set token_usage = token_usage + ${amount}::bigint
       where clerk_id = ${clerkId}
         and token_usage <= ${String(max)}::bigint - ${amount}::bigint
      returning token_usage::text as token_usage`);
    const row = updated[0];
    if (row) return { ok: true, tokenUsage: Number(row.token_usage) };
    const current = await this.db.execute<{ token_usage: string }>(
      sql`select token_usage::text as token_usage from public.users where clerk_id = ${clerkId}`,
    );
    const existing = current[0];
    if (!existing) return { ok: false, reason: "not_found" };
    return { ok: false, reason: "overflow", tokenUsage: Number(existing.token_usage) };
  }
}

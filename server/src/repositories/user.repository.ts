import { eq, inArray, sql } from "drizzle-orm";
import type { Database } from "../db/client.js";
import { type MessageJson, users } from "../db/schema.js";

/** Stats as `get_user_stats` returns them. */
export type UserStatsRow = {
  total_conversations: number;
  total_searches: number;
  message_count: number;
  token_usage: string | number;
  subscription_tier: string | null;
  subscription_status: string | null;
};

/** A row of the seed's `get_user_chat_history`. */
export type ChatHistoryRow = {
  session_id: string;
  title: string;
  last_message: MessageJson | null;
  created_at: Date | string;
  updated_at: Date | string;
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
   * statement (the first handshakes a node takes at the same time). Returns Clerk id → row id,
   * for every id given. The ids are sorted, so two nodes creating overlapping sets take the
   * unique index's locks in the same order (no deadlock).
   */
  async upsertSeenMany(clerkIds: string[]): Promise<Map<string, string>> {
    const ids = sql.join(
      [...new Set(clerkIds)].sort().map((id) => sql`${id}`),
      sql`, `,
    );
    const rows = await this.db.execute<{ id: string; clerk_id: string }>(sql`
      insert into users (clerk_id)
      select c.clerk_id from unnest(array[${ids}]::text[]) with ordinality as c(clerk_id, n)
       order by c.n
      on conflict (clerk_id) do update set last_seen_at = now()
      returning id, clerk_id`);
    return new Map(rows.map((r) => [r.clerk_id, r.id]));
  }

  /**
   * Records that these users were seen, in one statement. Returns the Clerk ids that still have
   * a row (a user deleted meanwhile is missing from the result).
   */
  async touchSeen(clerkIds: string[]): Promise<Set<string>> {
    const rows = await this.db
      .update(users)
      .set({ lastSeenAt: sql`now()` })
      .where(inArray(users.clerkId, clerkIds))
      .returning({ clerkId: users.clerkId });
    return new Set(rows.map((r) => r.clerkId));
  }

  /**
   * `get_user_stats` for many users in one statement (the stats broadcasts of a busy node).
   * Users without a row are missing from the result.
   */
  async statsMany(clerkIds: string[]): Promise<Map<string, UserStatsRow>> {
    const ids = sql.join(
      clerkIds.map((id) => sql`${id}`),
      sql`, `,
    );
    const rows = await this.db.execute<UserStatsRow & { clerk_id: string }>(sql`
      select c.clerk_id, s.*
        from unnest(array[${ids}]::text[]) as c(clerk_id),
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
   * Creates or updates the user's profile fields from Clerk (webhooks). Writing the same values
   * again changes nothing but `updated_at`, so a redelivered event is harmless.
   */
  async upsertProfile(
    clerkId: string,
    profile: { email: string | null; avatarUrl: string | null },
  ): Promise<string> {
    const [row] = await this.db
      .insert(users)
      .values({ clerkId, email: profile.email, avatarUrl: profile.avatarUrl })
      .onConflictDoUpdate({
        target: users.clerkId,
        set: { email: profile.email, avatarUrl: profile.avatarUrl },
      })
      .returning({ id: users.id });
    if (!row) throw new Error("upsert returned no row");
    return row.id;
  }

  /** Deletes the user's row; their chats, messages and searches cascade. True when one was deleted. */
  async deleteByClerkId(clerkId: string): Promise<boolean> {
    const rows = await this.db
      .delete(users)
      .where(eq(users.clerkId, clerkId))
      .returning({ id: users.id });
    return rows.length > 0;
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

  /** The seed's `get_user_chat_history`: every chat of the user, latest activity first. */
  async chatHistory(clerkId: string): Promise<ChatHistoryRow[]> {
    return this.db.execute<ChatHistoryRow>(
      sql`select * from public.get_user_chat_history(${clerkId})`,
    );
  }
}

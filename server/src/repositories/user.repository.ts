import { sql } from "drizzle-orm";
import type { Database } from "../db/client.js";
import { users } from "../db/schema.js";

/** Stats as `get_user_stats` returns them. */
export type UserStatsRow = {
  total_conversations: number;
  total_searches: number;
  message_count: number;
  token_usage: string | number;
  subscription_tier: string | null;
  subscription_status: string | null;
};

export class UserRepository {
  constructor(private readonly db: Database) {}

  /** Creates the user's row on first sight; otherwise records that they were seen. Returns the row id. */
  async upsertSeen(clerkId: string): Promise<string> {
    const [row] = await this.db
      .insert(users)
      .values({ clerkId })
      .onConflictDoUpdate({ target: users.clerkId, set: { lastSeenAt: sql`now()` } })
      .returning({ id: users.id });
    if (!row) throw new Error("upsert returned no row");
    return row.id;
  }

  /** The seed's `get_user_stats`; undefined when the user has no row. */
  async stats(clerkId: string): Promise<UserStatsRow | undefined> {
    const rows = await this.db.execute<UserStatsRow>(
      sql`select * from public.get_user_stats(${clerkId})`,
    );
    return rows[0];
  }
}

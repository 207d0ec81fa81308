import { sql } from "drizzle-orm";
import type { Database } from "../db/client.js";

export type SearchStatus = "completed" | "no_results" | "failed";

export interface SearchRow {
  id: string;
  resultsCount: number;
  status: SearchStatus;
  createdAt: Date;
}

/** Queries on search_sessions. */
export class SearchRepository {
  constructor(private readonly db: Database) {}

  /**
   * Records one search of the user with this Clerk id, in one statement; the database's trigger
   * bumps `users.total_searches` in the same transaction. Undefined when the user has no row.
   */
  async insertForClerkUser(
    clerkId: string,
    search: { filters: unknown; results: unknown; resultsCount: number; status: SearchStatus },
  ): Promise<SearchRow | undefined> {
    const rows = await this.db.execute<{
      id: string;
      results_count: number;
      status: SearchStatus;
      created_at: Date | string;
    }>(sql`
      insert into public.search_sessions (user_id, filters, results, results_count, status)
      select u.id, ${JSON.stringify(search.filters)}::jsonb, ${JSON.stringify(search.results)}::jsonb,
             ${search.resultsCount}, ${search.status}
        from public.users u
       where u.clerk_id = ${clerkId}
      returning id, results_count, status, created_at`);
    const r = rows[0];
    if (!r) return undefined;
    return {
      id: r.id,
      resultsCount: r.results_count,
      status: r.status,
      createdAt: new Date(r.created_at),
    };
  }
}

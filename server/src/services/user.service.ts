import type { UserStats } from "../../../protocol/index.js";
import type { UserRepository } from "../repositories/user.repository.js";
import { toUserStats } from "./mappers.js";

export class UserService {
  constructor(private readonly users: UserRepository) {}

  /** Called on every authenticated connection: creates the user's row on first sight, records last_seen_at. */
  provision(clerkId: string): Promise<string> {
    return this.users.upsertSeen(clerkId);
  }

  async stats(clerkId: string): Promise<UserStats> {
    const row = await this.users.stats(clerkId);
    if (!row) {
      return {
        totalConversations: 0,
        totalSearches: 0,
        messageCount: 0,
        tokenUsage: 0,
        subscriptionTier: null,
        subscriptionStatus: null,
      };
    }
    return toUserStats(row);
  }
}

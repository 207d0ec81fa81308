import type { MessageBody, UserStats } from "../../../protocol/index.js";
import type { UserRepository } from "../repositories/user.repository.js";
import type { Actor } from "./actor.js";
import { AppError, ErrorCode, notFound } from "./errors.js";
import { toMessageBody, toUserStats } from "./mappers.js";

/** A chat as the seed's `get_user_chat_history` lists it. */
export interface ChatHistoryEntry {
  id: string;
  title: string;
  lastMessage: MessageBody | null;
  createdAt: string;
  updatedAt: string;
}

/**
 * The largest `token_usage` the service accepts: beyond it a JSON number (and so every client
 * of the API and the protocol's `UserStats.tokenUsage`) can no longer be exact. The column is a
 * bigint, so the database itself could hold more.
 */
export const MAX_TOKEN_USAGE = Number.MAX_SAFE_INTEGER;

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

  /** Every chat of the user, latest activity first (`get_user_chat_history`). */
  async chatHistory(clerkId: string): Promise<ChatHistoryEntry[]> {
    const rows = await this.users.chatHistory(clerkId);
    return rows.map((r) => ({
      id: r.session_id,
      title: r.title,
      lastMessage: toMessageBody(r.last_message),
      createdAt: new Date(r.created_at).toISOString(),
      updatedAt: new Date(r.updated_at).toISOString(),
    }));
  }

  /** Creates or updates the user's email and avatar from Clerk. Returns the row id. */
  syncProfile(
    clerkId: string,
    profile: { email: string | null; avatarUrl: string | null },
  ): Promise<string> {
    return this.users.upsertProfile(clerkId, profile);
  }

  /** Deletes the user's row (chats, messages and searches cascade). True when there was one. */
  delete(clerkId: string): Promise<boolean> {
    return this.users.deleteByClerkId(clerkId);
  }
}

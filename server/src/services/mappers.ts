import type { ChatMessage, ChatSummary, MessageBody, UserStats } from "../../../protocol/index.js";
import type { ChatMessageRow, MessageJson } from "../db/schema.js";
import { isoFromMicros } from "../db/time.js";
import type { UserStatsRow } from "../repositories/user.repository.js";

const roles: ReadonlySet<string> = new Set<MessageBody["role"]>(["user", "assistant", "system"]);

/**
 * The wire form of a stored message body, or null when there is none (a chat's empty preview).
 *
 * Rows written outside the server (directly through Supabase/PostgREST, before the database
 * checked a user's inserts, or by hand) may hold any JSON. Only a well-formed body, a known
 * `role` and a string `content`, keeps its role. Anything else is served as `user`, never as
 * `system` or `assistant` (issue #11, item 2): these rows reach the model's context through the
 * service API, and `user` is the one role the model already treats as untrusted input, the role
 * anyone with a chat can write anyway. So a malformed row gains its writer nothing. It is not
 * dropped either: that would leave a hole in the chat's `seq` order that catch-up could not
 * explain, and hide data the operator may need to see. Its content is kept as text: the string
 * when `content` is one, else the stored JSON itself.
 */
export function toMessageBody(json: MessageJson | null): MessageBody | null {
  const stored: unknown = json;
  if (stored === null || stored === undefined) return null;
  if (typeof stored === "object" && !Array.isArray(stored)) {
    const { role, content } = stored as Record<string, unknown>;
    if (typeof content === "string") {
      return {
        role: typeof role === "string" && roles.has(role) ? (role as MessageBody["role"]) : "user",
        content,
      };
    }
  }
  return { role: "user", content: typeof stored === "string" ? stored : JSON.stringify(stored) };
}

export function toChatMessage(row: ChatMessageRow): ChatMessage {
  // A JSON null body has nothing to show; it is still a message of the chat (see toMessageBody).
  const body = toMessageBody(row.message) ?? { role: "user", content: "" };
  return {
    id: row.id,
    chatId: row.sessionId,
    seq: row.seq,
    clientId: row.clientId,
    role: body.role,
    content: body.content,
    createdAt: row.createdAt.toISOString(),
    ...(row.message?.stopped === true ? { stopped: true as const } : {}),
  };
}

export function toChatSummary(row: {
  id: string;
  title: string;
  lastMessage: MessageJson | null;
  lastSeq: number;
  version: number;
  createdAt: Date;
  updatedAt: Date;
  /** updated_at in exact microseconds, when the query selected it (see db/time.ts). */
  updatedUs?: string;
}): ChatSummary {
  return {
    id: row.id,
    title: row.title,
    lastMessage: toMessageBody(row.lastMessage),
    lastSeq: row.lastSeq,
    version: row.version,
    createdAt: row.createdAt.toISOString(),
    updatedAt: row.updatedUs ? isoFromMicros(row.updatedUs) : row.updatedAt.toISOString(),
  };
}

export function toUserStats(row: UserStatsRow): UserStats {
  return {
    totalConversations: row.total_conversations,
    totalSearches: row.total_searches,
    messageCount: row.message_count,
    tokenUsage: Number(row.token_usage),
    subscriptionTier: row.subscription_tier,
    subscriptionStatus: row.subscription_status,
  };
}

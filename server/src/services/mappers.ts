import type { ChatMessage, ChatSummary, MessageBody, UserStats } from "../../../protocol/index.js";
import type { ChatMessageRow, MessageJson } from "../db/schema.js";
import { isoFromMicros } from "../db/time.js";
import type { UserStatsRow } from "../repositories/user.repository.js";

const roles = new Set(["user", "assistant", "system"]);

/** The wire form of a stored message body. Rows written outside the server may hold any JSON. */
export function toMessageBody(json: MessageJson | null): MessageBody | null {
  if (!json || typeof json !== "object") return null;
  const role = roles.has(json.role) ? (json.role as MessageBody["role"]) : "system";
  const content = typeof json.content === "string" ? json.content : JSON.stringify(json);
  return { role, content };
}

export function toChatMessage(row: ChatMessageRow): ChatMessage {
  const body = toMessageBody(row.message) ?? { role: "system", content: "" };
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

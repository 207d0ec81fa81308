/**
 * The Drizzle schema: the tables of the seed (`../shared/seed`), as corrected by DESIGN.md.
 *
 * drizzle-kit generates the tables, constraints and indexes from this file. Triggers,
 * functions, roles, grants and RLS policies cannot be expressed here; they live in the
 * custom SQL migrations under `drizzle/` (see docs/schema.md).
 */
import { sql } from "drizzle-orm";
import {
  bigint,
  check,
  foreignKey,
  index,
  integer,
  jsonb,
  type PgTableExtraConfigValue,
  pgTable,
  text,
  timestamp,
  uniqueIndex,
  uuid,
} from "drizzle-orm/pg-core";

/**
 * The content of one stored message. The server writes `{ role, content }`; rows written by
 * other tools may hold any JSON, so readers check the fields (see services/mappers.ts).
 */
/** `stopped: true` marks a streamed reply stopped by the user before it finished. */
export type MessageJson = { role: string; content: string; stopped?: boolean };

/**
 * One row per Clerk user. Created by the server on the user's first connection.
 * The counters are lifetime counters: deleting a chat never lowers them (defect 13).
 */
export const users = pgTable(
  "users",
  {
    id: uuid("id").primaryKey().defaultRandom(),
    email: text("email"),
    lastSeenAt: timestamp("last_seen_at", { withTimezone: true }).defaultNow(),
    totalConversations: integer("total_conversations").notNull().default(0),
    totalSearches: integer("total_searches").notNull().default(0),
    createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
    updatedAt: timestamp("updated_at", { withTimezone: true }).notNull().defaultNow(),
    avatarUrl: text("avatar_url"),
    messageCount: integer("message_count").notNull().default(0),
    /** bigint, not the seed's integer: LLM token counts pass 2^31 for heavy users. */
    tokenUsage: bigint("token_usage", { mode: "number" }).notNull().default(0),
    subscriptionTier: text("subscription_tier").default("free"),
    subscriptionStatus: text("subscription_status").default("active"),
    clerkId: text("clerk_id").notNull().unique("users_clerk_id_key"),
    /** Points back at chat_sessions; the constraint is added after both tables exist (defect 4). */
    lastSessionId: uuid("last_session_id"),
  },
  // Annotated: the foreign key back to chat_sessions would otherwise make the type circular.
  (t): PgTableExtraConfigValue[] => [
    foreignKey({
      name: "users_last_session_id_fkey",
      columns: [t.lastSessionId],
      foreignColumns: [chatSessions.id],
    }).onDelete("set null"),
    check("users_token_usage_nonnegative", sql`${t.tokenUsage} >= 0`),
    // The seed's index; the unique constraint already indexes clerk_id, kept so that
    // tools and queries written against the seed find it by name.
    index("users_clerk_id_idx").on(t.clerkId),
  ],
);

/** A chat, as shown in the sidebar. */
export const chatSessions = pgTable(
  "chat_sessions",
  {
    id: uuid("id").primaryKey().defaultRandom(),
    userId: uuid("user_id").notNull(),
    /** NOT NULL with the default 'New Chat': satisfies both halves of the seed. */
    title: text("title").notNull().default("New Chat"),
    createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
    /** Bumped by the database on every update and on every new message: the sidebar's order. */
    updatedAt: timestamp("updated_at", { withTimezone: true }).notNull().defaultNow(),
    /** The `message` of the latest chat_memory row, kept by a trigger in the insert's transaction. */
    lastMessage: jsonb("last_message").$type<MessageJson>(),
    /** The highest `chat_memory.seq` handed out in this chat; the per-chat message counter. */
    lastSeq: bigint("last_seq", { mode: "number" }).notNull().default(0),
  },
  (t) => [
    foreignKey({
      name: "chat_sessions_user_id_fkey",
      columns: [t.userId],
      foreignColumns: [users.id],
    }).onDelete("cascade"),
    // Serves both the seed's lookup by user and the sidebar's order.
    index("idx_chat_sessions_user_id").on(t.userId, t.updatedAt.desc(), t.id.desc()),
    check("chat_sessions_title_length", sql`char_length(${t.title}) <= 500`),
  ],
);

/**
 * The messages. `id` is a uuid (defect 3): it never reveals volumes and is safe to create
 * anywhere. Order comes from `seq`, a per-chat counter that the database assigns under the
 * chat's row lock, so every reader sees one gap-free total order.
 */
export const chatMemory = pgTable(
  "chat_memory",
  {
    id: uuid("id").primaryKey().defaultRandom(),
    /** NOT NULL: a message without a chat is an orphan nobody can see (defect 2). */
    sessionId: uuid("session_id").notNull(),
    message: jsonb("message").$type<MessageJson>().notNull(),
    createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
    /** Position in the chat, 1, 2, 3, … Set by the BEFORE INSERT trigger; any value given is overwritten. */
    seq: bigint("seq", { mode: "number" }).notNull().default(0),
    /** The sender's idempotency key, unique per chat: a retried send is stored once. */
    clientId: text("client_id").notNull().default(sql`gen_random_uuid()::text`),
  },
  (t) => [
    foreignKey({
      name: "chat_memory_session_id_fkey",
      columns: [t.sessionId],
      foreignColumns: [chatSessions.id],
    }).onDelete("cascade"),
    uniqueIndex("chat_memory_session_seq_key").on(t.sessionId, t.seq),
    uniqueIndex("chat_memory_session_client_id_key").on(t.sessionId, t.clientId),
    check("chat_memory_client_id_length", sql`char_length(${t.clientId}) between 1 and 128`),
  ],
);

/** One recorded search. Written by the app's backend (service role) or the user. */
export const searchSessions = pgTable(
  "search_sessions",
  {
    id: uuid("id").primaryKey().defaultRandom(),
    userId: uuid("user_id").notNull(),
    filters: jsonb("filters").notNull(),
    results: jsonb("results").notNull(),
    resultsCount: integer("results_count").notNull(),
    status: text("status").notNull(),
    createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [
    foreignKey({
      name: "search_sessions_user_id_fkey",
      columns: [t.userId],
      foreignColumns: [users.id],
    }).onDelete("cascade"),
    check(
      "search_sessions_status_check",
      sql`${t.status} in ('completed', 'no_results', 'failed')`,
    ),
    index("idx_search_sessions_user_id").on(t.userId, t.createdAt.desc()),
  ],
);

export type User = typeof users.$inferSelect;
export type ChatSession = typeof chatSessions.$inferSelect;
export type ChatMessageRow = typeof chatMemory.$inferSelect;
export type SearchSession = typeof searchSessions.$inferSelect;

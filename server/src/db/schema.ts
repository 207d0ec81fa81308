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
  boolean,
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
    /**
     * Clerk's timestamp of the last `user.created`/`user.updated` applied to this row. Webhooks
     * arrive at least once and in any order: an event older than this one changes nothing.
     * NULL until the first one (a row created by the user's first connection).
     */
    profileEventAt: timestamp("profile_event_at", { withTimezone: true }),
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
    /**
     * Raised by the database on every change to the row (a rename, each stored message): of two
     * sidebar entries for one chat, the one with the higher version is newer (0010_chat_version).
     */
    version: bigint("version", { mode: "number" }).notNull().default(1),
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

/**
 * Users Clerk deleted, kept so that they stay deleted: nothing may create their `users` row
 * again (not a handshake with a token still in hand, not a late or retried `user.updated`),
 * on any node and whenever it happens, until a `user.created` newer than the deletion (Clerk
 * created the user again) removes the tombstone. Written in the deletion's transaction.
 */
export const userTombstones = pgTable("user_tombstones", {
  clerkId: text("clerk_id").primaryKey(),
  /** When this server recorded the deletion (the first delivery). */
  deletedAt: timestamp("deleted_at", { withTimezone: true }).notNull().defaultNow(),
  /** Clerk's timestamp of the newest `user.deleted` event: a `user.created` must be newer. */
  eventAt: timestamp("event_at", { withTimezone: true }).notNull().defaultNow(),
  /**
   * The deleted row's id, given back to the row if Clerk creates the user again: a node that
   * still remembers the user's row id (UserService's known users) then remembers it rightly.
   * No foreign key: the row it named is gone.
   */
  userId: uuid("user_id"),
});

/**
 * The transactional outbox: events for the app's own backend (docs/service-api.md, "Webhooks to
 * your backend"). Rows are written by the database itself (triggers on chat_memory, chat_sessions
 * and users) in the transaction of the change they describe, or by the server for events that
 * have no row of their own (a stop request). A row is deleted once its webhook was delivered;
 * one whose retries ran out stays, with `failed_at` set, until it is requeued.
 */
export const appEvents = pgTable(
  "app_events",
  {
    /** The delivery order: a chat's events are delivered by ascending id, one at a time. */
    id: bigint("id", { mode: "number" }).primaryKey().generatedAlwaysAsIdentity(),
    /** The webhook's `webhook-id` (`evt_<uuid>`): the same on every retry, for de-duplication. */
    eventId: uuid("event_id").notNull().defaultRandom().unique("app_events_event_id_key"),
    /** No foreign key: a chat's `chat.deleted` event outlives the chat. */
    chatId: uuid("chat_id").notNull(),
    type: text("type").notNull(),
    /** The body's `data`. */
    data: jsonb("data").notNull(),
    createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
    /** Failed delivery attempts so far. */
    attempts: integer("attempts").notNull().default(0),
    /** When the next attempt is due (the backoff after a failure). */
    nextAttemptAt: timestamp("next_attempt_at", { withTimezone: true }).notNull().defaultNow(),
    lastAttemptAt: timestamp("last_attempt_at", { withTimezone: true }),
    lastError: text("last_error"),
    /** When the event was last requeued after failing: its retries are counted from then. */
    requeuedAt: timestamp("requeued_at", { withTimezone: true }),
    /** Set when the retries ran out (APP_WEBHOOK_RETRY_FOR_SECONDS); null while pending. */
    failedAt: timestamp("failed_at", { withTimezone: true }),
  },
  (t) => [
    // The per-chat queue: the oldest pending event of a chat.
    index("app_events_chat_id_idx").on(t.chatId, t.id),
    // The sweep for overdue events (a lost wake-up) and the pending count.
    index("app_events_pending_idx").on(t.nextAttemptAt).where(sql`${t.failedAt} is null`),
    // The failed-deliveries listing.
    index("app_events_failed_idx").on(t.id).where(sql`${t.failedAt} is not null`),
  ],
);

/**
 * One row, written by each node at start: whether events are enqueued at all (true when the
 * node has APP_WEBHOOK_URL). Read by the outbox triggers, so that a deployment without a backend
 * pays nothing per message.
 */
export const appEventSettings = pgTable(
  "app_event_settings",
  {
    /** Always true: the table holds at most one row. */
    id: boolean("id").primaryKey().default(true),
    enabled: boolean("enabled").notNull().default(false),
  },
  (t) => [check("app_event_settings_single_row", sql`${t.id}`)],
);

/**
 * Which node may deliver a chat's events, and until when (drizzle/0011_app_event_leases.sql): the
 * holder renews its leases while it lives, so a dead node's chats are taken over once they lapse.
 * `nodeId` null: the chat waits out a retry's backoff until `leaseUntil`.
 */
export const appEventLeases = pgTable("app_event_leases", {
  chatId: uuid("chat_id").primaryKey(),
  nodeId: text("node_id"),
  leaseUntil: timestamp("lease_until", { withTimezone: true }).notNull(),
});

export type User = typeof users.$inferSelect;
export type ChatSession = typeof chatSessions.$inferSelect;
export type ChatMessageRow = typeof chatMemory.$inferSelect;
export type SearchSession = typeof searchSessions.$inferSelect;

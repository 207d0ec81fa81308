import { and, desc, eq, sql } from "drizzle-orm";
import type { Database } from "../db/client.js";
import { type ChatSession, chatSessions } from "../db/schema.js";

/** A chat row plus `updated_at` in exact microseconds, for sidebar cursors. */
export type ChatRow = ChatSession & { updatedUs: string };

const chatColumns = {
  id: chatSessions.id,
  userId: chatSessions.userId,
  title: chatSessions.title,
  createdAt: chatSessions.createdAt,
  updatedAt: chatSessions.updatedAt,
  lastMessage: chatSessions.lastMessage,
  lastSeq: chatSessions.lastSeq,
  // JS dates keep milliseconds; Postgres keeps microseconds. The cursor needs them all.
  updatedUs: sql<string>`(extract(epoch from ${chatSessions.updatedAt}) * 1000000)::bigint::text`,
};

/** A position in the sidebar: strictly after (older than) this (updated_at, id). */
export interface SidebarCursor {
  updatedUs: string;
  id: string;
}

/** Queries on chat_sessions. Every query is scoped to the owning user's row id. */
export class ChatRepository {
  constructor(private readonly db: Database) {}

  async list(userId: string, limit: number, after?: SidebarCursor): Promise<ChatRow[]> {
    const position = after
      ? sql`(${chatSessions.updatedAt}, ${chatSessions.id}) < (timestamptz 'epoch' + ${after.updatedUs}::bigint * interval '1 microsecond', ${after.id}::uuid)`
      : undefined;
    return this.db
      .select(chatColumns)
      .from(chatSessions)
      .where(and(eq(chatSessions.userId, userId), position))
      .orderBy(desc(chatSessions.updatedAt), desc(chatSessions.id))
      .limit(limit);
  }

  async find(userId: string, chatId: string): Promise<ChatRow | undefined> {
    const [row] = await this.db
      .select(chatColumns)
      .from(chatSessions)
      .where(and(eq(chatSessions.id, chatId), eq(chatSessions.userId, userId)));
    return row;
  }

  /**
   * Inserts a chat. With a client-chosen id that already exists, nothing is inserted and
   * undefined is returned (the caller then looks the chat up: a retried create).
   */
  async insert(
    userId: string,
    values: { id?: string | undefined; title?: string | undefined },
  ): Promise<ChatRow | undefined> {
    const [row] = await this.db
      .insert(chatSessions)
      .values({
        userId,
        ...(values.id ? { id: values.id } : {}),
        ...(values.title ? { title: values.title } : {}),
      })
      .onConflictDoNothing({ target: chatSessions.id })
      .returning(chatColumns);
    return row;
  }

  async rename(userId: string, chatId: string, title: string): Promise<ChatRow | undefined> {
    const [row] = await this.db
      .update(chatSessions)
      .set({ title })
      .where(and(eq(chatSessions.id, chatId), eq(chatSessions.userId, userId)))
      .returning(chatColumns);
    return row;
  }

  /** Deletes the chat (its messages cascade). True when a row was deleted. */
  async delete(userId: string, chatId: string): Promise<boolean> {
    const rows = await this.db
      .delete(chatSessions)
      .where(and(eq(chatSessions.id, chatId), eq(chatSessions.userId, userId)))
      .returning({ id: chatSessions.id });
    return rows.length > 0;
  }
}

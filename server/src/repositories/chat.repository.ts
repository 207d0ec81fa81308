import { and, eq, sql } from "drizzle-orm";
import type postgres from "postgres";
import { Limits } from "../../../protocol/constants.js";
import { compact, unlessAborted } from "../db/abortable.js";
import type { Database } from "../db/client.js";
import { errorCode, FOREIGN_KEY_VIOLATION } from "../db/errors.js";
import { type ChatSession, chatSessions, type MessageJson } from "../db/schema.js";

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
  version: chatSessions.version,
  // JS dates keep milliseconds; Postgres keeps microseconds. The cursor needs them all.
  updatedUs: sql<string>`(extract(epoch from ${chatSessions.updatedAt}) * 1000000)::bigint::text`,
};

/** A position in the sidebar: strictly after (older than) this (updated_at, id). */
export interface SidebarCursor {
  updatedUs: string;
  id: string;
}

/** What a sidebar entry adds to a page's JSON besides its title and preview (ids, dates, keys). */
const PER_CHAT_BYTES = 200;

type SidebarRow = {
  id: string;
  user_id: string;
  title: string;
  created_at: string;
  updated_at: string;
  last_message: MessageJson | null;
  last_seq: string;
  version: string;
  updated_us: string;
  page_rows: string;
};

/** A chat_sessions row as raw SQL selects it (with `updated_us`), as a ChatRow. */
export function toChatRow(r: ChatRowColumns): ChatRow {
  return {
    id: r.id,
    userId: r.user_id,
    title: r.title,
    createdAt: new Date(r.created_at),
    updatedAt: new Date(r.updated_at),
    lastMessage: r.last_message,
    lastSeq: Number(r.last_seq),
    version: Number(r.version),
    updatedUs: r.updated_us,
  };
}

/** The columns toChatRow reads, with the driver's types for dates. */
export type ChatRowColumns = {
  id: string;
  user_id: string;
  title: string;
  created_at: string | Date;
  updated_at: string | Date;
  last_message: MessageJson | null;
  last_seq: string;
  version: string;
  updated_us: string;
};

/** Queries on chat_sessions. Every query is scoped to the owning user's row id. */
export class ChatRepository {
  constructor(
    private readonly db: Database,
    private readonly sql: postgres.Sql,
  ) {}

  /**
   * A page of the sidebar: the user's chats after `after`, latest activity first. At most
   * `limit` chats and at most `maxBytes` of them as JSON (estimated, as for message pages: the
   * preview's and title's JSON plus PER_CHAT_BYTES), but always at least one; Postgres adds the
   * sizes up, so 200 chats with 64,000-character previews never leave it whole. `hasMore`: more
   * chats follow (cut by count or by bytes). With `signal` aborted it is not sent (db/abortable.ts).
   */
  async list(
    userId: string,
    limit: number,
    after?: SidebarCursor,
    options: { maxBytes?: number; signal?: AbortSignal | undefined } = {},
  ): Promise<{ rows: ChatRow[]; hasMore: boolean }> {
    const sql = this.sql;
    const maxBytes = options.maxBytes ?? Limits.MAX_PAGE_BYTES;
    const position = after
      ? sql`and (c.updated_at, c.id) < (timestamptz 'epoch' + ${after.updatedUs}::bigint * interval '1 microsecond', ${after.id}::uuid)`
      : sql``;
    // As for message pages (MessageRepository.page): a recursive walk adds up the entries'
    // JSON sizes in sidebar order and stops at the first one past the budget.
    const size = (c: string) =>
      sql.unsafe(
        `octet_length(coalesce(${c}.last_message::text, 'null')) + octet_length(to_jsonb(${c}.title)::text) + ${PER_CHAT_BYTES}`,
      );
    const query = sql<SidebarRow[]>`
      with recursive page as (
        select c.id, c.user_id, c.title, c.created_at, c.updated_at, c.last_message, c.last_seq,
               c.version,
               (extract(epoch from c.updated_at) * 1000000)::bigint::text as updated_us
          from public.chat_sessions c
         where c.user_id = ${userId} ${position}
         order by c.updated_at desc, c.id desc
         limit ${limit + 1}
      ), numbered as (
        select p.*, row_number() over (order by p.updated_at desc, p.id desc) as rn,
               count(*) over () as page_rows
          from page p
      ), walk as (
        select n.rn, ${size("n")} as total from numbered n where n.rn = 1
        union all
        select n.rn, w.total + ${size("n")}
          from walk w join numbered n on n.rn = w.rn + 1
         where w.total <= ${maxBytes} and n.rn <= ${limit}
      )
      select n.id, n.user_id, n.title, n.created_at, n.updated_at, n.last_message, n.last_seq,
             n.version, n.updated_us, n.page_rows
        from numbered n join walk w on w.rn = n.rn
       where n.rn = 1 or w.total <= ${maxBytes}
       order by n.updated_at desc, n.id desc`;
    const rows = compact(await unlessAborted(query, options.signal));
    return {
      rows: rows.map(toChatRow),
      hasMore: rows.length > 0 && Number(rows[0]?.page_rows) > rows.length,
    };
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
   * "exists" is returned (the caller then looks the chat up: a retried create). "userMissing":
   * the user's row is gone (deleted while one of their sockets was still connected; the
   * foreign key refused the chat), so nothing was inserted.
   */
  async insert(
    userId: string,
    values: { id?: string | undefined; title?: string | undefined },
  ): Promise<ChatRow | "exists" | "userMissing"> {
    try {
      const [row] = await this.db
        .insert(chatSessions)
        .values({
          userId,
          ...(values.id ? { id: values.id } : {}),
          ...(values.title ? { title: values.title } : {}),
        })
        .onConflictDoNothing({ target: chatSessions.id })
        .returning(chatColumns);
      return row ?? "exists";
    } catch (err) {
      if (errorCode(err) === FOREIGN_KEY_VIOLATION) return "userMissing";
      throw err;
    }
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

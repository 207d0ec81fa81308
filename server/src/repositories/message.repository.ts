import { and, asc, desc, eq, gt, lt, sql } from "drizzle-orm";
import type { Database } from "../db/client.js";
import { errorCode } from "../db/errors.js";
import { type ChatMessageRow, chatMemory, type MessageJson } from "../db/schema.js";
import type { Metrics } from "../metrics.js";

/** A message row as stored, plus whether it already existed (a retried send). */
export interface StoredMessage {
  row: ChatMessageRow;
  duplicate: boolean;
  /** The chat's title and creation time, for the sidebar entry. */
  chat: { title: string; createdAt: Date };
}

type InsertResultRow = {
  id: string;
  session_id: string;
  seq: string;
  client_id: string;
  message: MessageJson;
  created_at: Date;
  duplicate: boolean;
  title: string;
  chat_created_at: Date;
};

const UNIQUE_VIOLATION = "23505";

export class MessageRepository {
  constructor(
    private readonly db: Database,
    private readonly metrics?: Metrics,
  ) {}

  private timed<T>(operation: string, work: () => Promise<T>): Promise<T> {
    return this.metrics ? this.metrics.timeDb(operation, work) : work();
  }

  /**
   * Stores a message in a chat owned by `userId`, once per (chat, clientId), in one statement
   * (one round trip, one transaction). The triggers assign `seq` and update the chat's
   * last_message/updated_at and the user's message_count in the same transaction.
   *
   * Returns undefined when the chat does not exist or is not the user's. When the clientId
   * was already stored, returns that row with `duplicate: true` and writes nothing.
   */
  async insertOnce(
    userId: string,
    chatId: string,
    clientId: string,
    message: MessageJson,
  ): Promise<StoredMessage | undefined> {
    const statement = sql`
      with chat as (
        select id, title, created_at from public.chat_sessions
         where id = ${chatId} and user_id = ${userId}
      ), existing as (
        select m.* from public.chat_memory m, chat
         where m.session_id = chat.id and m.client_id = ${clientId}
      ), inserted as (
        insert into public.chat_memory (session_id, client_id, message)
        select chat.id, ${clientId}, ${JSON.stringify(message)}::jsonb from chat
         where not exists (select 1 from existing)
        returning *
      )
      select i.id, i.session_id, i.seq, i.client_id, i.message, i.created_at, false as duplicate,
             c.title, c.created_at as chat_created_at
        from inserted i, chat c
      union all
      select e.id, e.session_id, e.seq, e.client_id, e.message, e.created_at, true,
             c.title, c.created_at
        from existing e, chat c`;
    let rows: InsertResultRow[];
    try {
      rows = await this.timed("message_insert", () => this.db.execute<InsertResultRow>(statement));
    } catch (e) {
      // The same clientId raced in from another device or node and won: read its row.
      if (errorCode(e) !== UNIQUE_VIOLATION) throw e;
      rows = await this.db.execute<InsertResultRow>(statement);
    }
    const r = rows[0];
    if (!r) return undefined;
    return {
      row: {
        id: r.id,
        sessionId: r.session_id,
        seq: Number(r.seq),
        clientId: r.client_id,
        message: r.message,
        createdAt: new Date(r.created_at),
      },
      duplicate: r.duplicate,
      chat: { title: r.title, createdAt: new Date(r.chat_created_at) },
    };
  }

  /**
   * A page of a chat's messages, always returned oldest first. `before`: the `limit` messages
   * just older than that seq; `after`: the `limit` just newer; neither: the latest `limit`.
   * Fetches one extra row to tell whether more exist. The caller checks ownership.
   */
  async page(
    chatId: string,
    limit: number,
    position: { before?: number | undefined; after?: number | undefined } = {},
  ): Promise<{ rows: ChatMessageRow[]; hasMore: boolean }> {
    const forward = position.after !== undefined;
    const bound =
      position.after !== undefined
        ? gt(chatMemory.seq, position.after)
        : position.before !== undefined
          ? lt(chatMemory.seq, position.before)
          : undefined;
    const rows = await this.timed("message_page", () =>
      this.db
        .select()
        .from(chatMemory)
        .where(and(eq(chatMemory.sessionId, chatId), bound))
        .orderBy(forward ? asc(chatMemory.seq) : desc(chatMemory.seq))
        .limit(limit + 1),
    );
    const hasMore = rows.length > limit;
    const page = rows.slice(0, limit);
    return { rows: forward ? page : page.reverse(), hasMore };
  }
}

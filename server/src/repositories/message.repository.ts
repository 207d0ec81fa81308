import { and, asc, desc, eq, gt, inArray, lt } from "drizzle-orm";
import type postgres from "postgres";
import type { Database } from "../db/client.js";
import { errorCode } from "../db/errors.js";
import { type ChatMessageRow, chatMemory, chatSessions, type MessageJson } from "../db/schema.js";
import { isoFromMicros } from "../db/time.js";
import type { Metrics } from "../metrics.js";

/** One message of a batch, as stored, plus whether it already existed (a retried send). */
export interface StoredMessage {
  row: ChatMessageRow;
  duplicate: boolean;
}

/** The result of storing a batch into one chat. */
export interface StoredBatch {
  /** By clientId. */
  messages: Map<string, StoredMessage>;
  /** The chat's title and creation time, for the sidebar entry. */
  chat: { title: string; createdAt: Date };
  /** The chat's updated_at after the batch, exact to the microsecond (ISO 8601). */
  updatedAt: string | undefined;
}

type BatchRow = {
  id: string;
  session_id: string;
  seq: string;
  client_id: string;
  message: MessageJson;
  created_at: Date;
  created_us: string;
  duplicate: boolean;
  title: string;
  chat_created_at: Date;
};

const UNIQUE_VIOLATION = "23505";
const FOREIGN_KEY_VIOLATION = "23503";

export class MessageRepository {
  constructor(
    private readonly db: Database,
    private readonly sql: postgres.Sql,
    private readonly metrics?: Metrics,
  ) {}

  private timed<T>(operation: string, work: () => Promise<T>): Promise<T> {
    return this.metrics ? this.metrics.timeDb(operation, work) : work();
  }

  /**
   * Stores a batch of messages in a chat owned by `userId`, in one statement: one round trip,
   * one transaction, one commit (group commit). Rows are inserted in the batch's order, so
   * the BEFORE INSERT trigger gives them consecutive seqs in that order; the triggers update
   * last_message/updated_at and message_count in the same transaction. A clientId already
   * stored in the chat is not inserted again: its row comes back with `duplicate: true`.
   * The caller passes distinct clientIds.
   *
   * Returns undefined when the chat does not exist or is not the user's.
   */
  async insertBatch(
    userId: string,
    chatId: string,
    items: { clientId: string; message: MessageJson }[],
  ): Promise<StoredBatch | undefined> {
    const clientIds = items.map((i) => i.clientId);
    const bodies = items.map((i) => JSON.stringify(i.message));
    const run = () => this.sql<BatchRow[]>`
      with input as (
        select * from unnest(${this.sql.array(clientIds)}::text[], ${this.sql.array(bodies)}::text[])
          with ordinality as t(client_id, message, ord)
      ), chat as (
        select id, title, created_at from public.chat_sessions
         where id = ${chatId} and user_id = ${userId}
      ), existing as (
        select m.* from public.chat_memory m, chat
         where m.session_id = chat.id and m.client_id in (select client_id from input)
      ), inserted as (
        insert into public.chat_memory (session_id, client_id, message)
        select chat.id, i.client_id, i.message::jsonb from input i, chat
         where not exists (select 1 from existing e where e.client_id = i.client_id)
         order by i.ord
        returning *
      )
      select r.id, r.session_id, r.seq, r.client_id, r.message, r.created_at,
             (extract(epoch from r.created_at) * 1000000)::bigint::text as created_us,
             r.duplicate, c.title, c.created_at as chat_created_at
        from (select *, false as duplicate from inserted
              union all
              select *, true from existing) r, chat c`;
    // The chat deleted while the statement ran (the trigger locks its row only after the delete
    // committed, and the foreign key then refuses the message): nothing was stored, and the chat
    // is not found, exactly as if the delete had come first.
    const insert = () =>
      this.timed("message_insert", run).catch((e: unknown) => {
        if (errorCode(e) === FOREIGN_KEY_VIOLATION) return undefined;
        throw e;
      });
    let rows: BatchRow[] | undefined;
    try {
      rows = await insert();
    } catch (e) {
      // A clientId raced in from another node and won: the retry finds it in `existing`.
      if (errorCode(e) !== UNIQUE_VIOLATION) throw e;
      rows = await insert();
    }
    const first = rows?.[0];
    if (!rows || !first) return undefined;
    const messages = new Map<string, StoredMessage>();
    let lastInsertedUs: string | undefined;
    for (const r of rows) {
      messages.set(r.client_id, {
        row: {
          id: r.id,
          sessionId: r.session_id,
          seq: Number(r.seq),
          clientId: r.client_id,
          message: r.message,
          createdAt: new Date(r.created_at),
        },
        duplicate: r.duplicate,
      });
      if (!r.duplicate) lastInsertedUs = r.created_us;
    }
    return {
      messages,
      chat: { title: first.title, createdAt: new Date(first.chat_created_at) },
      updatedAt: lastInsertedUs === undefined ? undefined : isoFromMicros(lastInsertedUs),
    };
  }

  /**
   * A page of a chat's messages, always returned oldest first. `before`: the `limit` messages
   * just older than that seq; `after`: the `limit` just newer; neither: the latest `limit`.
   * Fetches one extra row to tell whether more exist. Like every user-scoped query, it carries
   * the owner in its WHERE clause: a chat that is not `userId`'s reads as empty, so a service
   * that forgot its ownership check still could not leak another user's messages.
   */
  async page(
    userId: string,
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
        .where(
          and(
            eq(chatMemory.sessionId, chatId),
            inArray(
              chatMemory.sessionId,
              this.db
                .select({ id: chatSessions.id })
                .from(chatSessions)
                .where(and(eq(chatSessions.id, chatId), eq(chatSessions.userId, userId))),
            ),
            bound,
          ),
        )
        .orderBy(forward ? asc(chatMemory.seq) : desc(chatMemory.seq))
        .limit(limit + 1),
    );
    const hasMore = rows.length > limit;
    const page = rows.slice(0, limit);
    return { rows: forward ? page : page.reverse(), hasMore };
  }
}

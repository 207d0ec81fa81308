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

/** The messages of one chat for insertMany. */
export interface InsertGroup {
  /** The owner's `users.id`: the chat is only written if it is theirs. */
  userId: string;
  chatId: string;
  items: { clientId: string; message: MessageJson }[];
}

const compare = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

/** One chat's rows of a batch as a StoredBatch; undefined when there are none (not the user's). */
function toStoredBatch(rows: BatchRow[] | undefined): StoredBatch | undefined {
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

type BatchRow = {
  id: string;
  user_id: string;
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
const DEADLOCK_DETECTED = "40P01";
const MAX_DEADLOCK_ATTEMPTS = 5;
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
   * Stores a batch of messages in a chat owned by `userId` (see insertMany). Returns undefined
   * when the chat does not exist or is not the user's.
   */
  async insertBatch(
    userId: string,
    chatId: string,
    items: { clientId: string; message: MessageJson }[],
  ): Promise<StoredBatch | undefined> {
    return (await this.insertMany([{ userId, chatId, items }]))[0];
  }

  /**
   * Stores the messages of many chats, each owned by its group's `userId`, in one statement:
   * one round trip, one transaction, one commit (group commit across chats). Within a chat,
   * rows are inserted in the group's order, so the BEFORE INSERT trigger gives them consecutive
   * seqs in that order; the triggers update last_message/updated_at and message_count in the
   * same transaction. A clientId already stored in its chat is not inserted again: its row
   * comes back with `duplicate: true`. Each group passes distinct clientIds and its own chat.
   *
   * Rows go in sorted by (owner, chat), so that every batch, on every node, takes the row locks
   * of its chats and users in one global order: concurrent batches wait for each other but
   * never deadlock.
   *
   * Returns, per group (same index), what was stored, or undefined when its chat does not exist
   * or is not the user's. If another statement gets in the way (a chat deleted while the batch
   * ran, a clientId raced in from another node), each chat is stored on its own instead.
   */
  async insertMany(groups: InsertGroup[]): Promise<(StoredBatch | undefined)[]> {
    const order = groups
      .map((g, index) => ({ g, index }))
      .sort((a, b) => compare(a.g.userId, b.g.userId) || compare(a.g.chatId, b.g.chatId));
    // One jsonb parameter rather than four arrays: no array type to look up on the connection
    // (the driver runs with fetch_types off, see db/client.ts), and the rows stay together.
    const input: { u: string; s: string; c: string; m: MessageJson }[] = [];
    for (const { g } of order) {
      for (const item of g.items) {
        input.push({ u: g.userId, s: g.chatId, c: item.clientId, m: item.message });
      }
    }
    const json = JSON.stringify(input);
    const run = () => this.sql<BatchRow[]>`
      with input as (
        select (e->>'u')::uuid as user_id, (e->>'s')::uuid as session_id, e->>'c' as client_id,
               e->'m' as message, ord
          from jsonb_array_elements(${json}::jsonb) with ordinality as t(e, ord)
      ), chat as (
        -- Only the chats each group's user owns: every join below matches chat and user both.
        select c.id, c.user_id, c.title, c.created_at from public.chat_sessions c
         where (c.id, c.user_id) in (select distinct session_id, user_id from input)
      ), mine as (
        select i.* from input i
          join chat on chat.id = i.session_id and chat.user_id = i.user_id
      ), existing as (
        select m.* from public.chat_memory m
          join mine i on i.session_id = m.session_id and i.client_id = m.client_id
      ), inserted as (
        insert into public.chat_memory (session_id, client_id, message)
        select i.session_id, i.client_id, i.message from mine i
         where not exists (select 1 from existing e
                            where e.session_id = i.session_id and e.client_id = i.client_id)
         order by i.ord
        returning *
      )
      select r.id, r.session_id, r.seq, r.client_id, r.message, r.created_at,
             (extract(epoch from r.created_at) * 1000000)::bigint::text as created_us,
             r.duplicate, c.user_id, c.title, c.created_at as chat_created_at
        from (select *, false as duplicate from inserted
              union all
              select *, true from existing) r
        join chat c on c.id = r.session_id`;
    let rows: BatchRow[];
    try {
      rows = await this.retryDeadlocks(run);
    } catch (e) {
      const code = errorCode(e);
      if (code !== UNIQUE_VIOLATION && code !== FOREIGN_KEY_VIOLATION) throw e;
      if (groups.length > 1) {
        // Split: one chat's trouble must not fail the others.
        const each: (StoredBatch | undefined)[] = [];
        for (const g of groups) each.push(await this.insertBatch(g.userId, g.chatId, g.items));
        return each;
      }
      // The chat deleted while the statement ran (the trigger locks its row only after the
      // delete committed, and the foreign key then refuses the message): nothing was stored,
      // and the chat is not found, exactly as if the delete had come first.
      if (code === FOREIGN_KEY_VIOLATION) return [undefined];
      // A clientId raced in from another node and won: the retry finds it in `existing`.
      rows = await this.retryDeadlocks(run).catch((again: unknown) => {
        if (errorCode(again) === FOREIGN_KEY_VIOLATION) return [];
        throw again;
      });
    }
    // A chat has one owner, so its rows are that owner's group's; another user's group naming
    // the same chat gets nothing.
    const byChat = new Map<string, BatchRow[]>();
    for (const r of rows) {
      const list = byChat.get(r.session_id);
      if (list) list.push(r);
      else byChat.set(r.session_id, [r]);
    }
    return groups.map((g) => {
      const mine = byChat.get(g.chatId);
      return mine?.[0]?.user_id === g.userId ? toStoredBatch(mine) : undefined;
    });
  }

  /**
   * Runs the insert, again if Postgres chose it as a deadlock's victim. Batches of one node
   * never contend (MessageService keeps a user in one batch at a time), but two nodes writing
   * for the same user can: updating a users row twice in a transaction re-checks its foreign
   * key to the user's last chat, which the other batch may hold. The victim was rolled back
   * whole, so running it again is safe, and clientIds keep it idempotent.
   */
  private async retryDeadlocks(run: () => Promise<BatchRow[]>): Promise<BatchRow[]> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.timed("message_insert", run);
      } catch (e) {
        if (errorCode(e) !== DEADLOCK_DETECTED || attempt >= MAX_DEADLOCK_ATTEMPTS) throw e;
        this.metrics?.dbDeadlocks.inc();
      }
    }
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

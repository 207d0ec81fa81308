import type postgres from "postgres";
import { Limits } from "../../../protocol/constants.js";
import { compact, unlessAborted } from "../db/abortable.js";
import { errorCode } from "../db/errors.js";
import type { ChatMessageRow, MessageJson } from "../db/schema.js";
import type { Metrics } from "../metrics.js";
import { type ChatRow, toChatRow } from "./chat.repository.js";

/** One message of a batch, as stored, plus whether it already existed (a retried send). */
export interface StoredMessage {
  row: ChatMessageRow;
  duplicate: boolean;
}

/** The result of storing a batch into one chat. */
export interface StoredBatch {
  /** By clientId. */
  messages: Map<string, StoredMessage>;
  /** The chat's row as the batch's commit leaves it (its sidebar entry). */
  chat: ChatRow;
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
  }
  return {
    messages,
    chat: toChatRow({ ...first, id: first.session_id, created_at: first.chat_created_at }),
  };
}

/** A row of `store_messages` (migration 0012): a message, and its chat's row after the batch. */
type BatchRow = {
  id: string;
  session_id: string;
  seq: string;
  client_id: string;
  message: MessageJson;
  created_at: Date;
  duplicate: boolean;
  user_id: string;
  title: string;
  chat_created_at: Date;
  updated_at: Date;
  updated_us: string;
  last_message: MessageJson | null;
  last_seq: string;
  version: string;
};

const UNIQUE_VIOLATION = "23505";
const DEADLOCK_DETECTED = "40P01";
const MAX_DEADLOCK_ATTEMPTS = 5;
const FOREIGN_KEY_VIOLATION = "23503";

export class MessageRepository {
  constructor(
    private readonly sql: postgres.Sql,
    private readonly metrics?: Metrics,
    /**
     * Called after a statement stored new messages (committed): the outbox's delivery on this
     * node looks for their events at once instead of at its next poll.
     */
    private readonly onStored?: () => void,
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
   * Stores the messages of many chats, each owned by its group's `userId`, in one call of
   * `store_messages` (migration 0012): one round trip, one transaction, one commit (group
   * commit across chats). Within a chat, rows are inserted in the group's order, so the BEFORE
   * INSERT trigger gives them consecutive seqs in that order; the triggers update
   * last_message/updated_at/version and message_count in the same transaction. A clientId
   * already stored in its chat is not inserted again: its row comes back with `duplicate: true`.
   * Each group passes distinct clientIds and its own chat. With the messages comes each chat's
   * row as the commit leaves it (after the triggers, with any rename that committed first):
   * the sidebar entry the batch broadcasts.
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
    const run = () => this.sql<BatchRow[]>`select * from public.store_messages(${json}::jsonb)`;
    let rows: BatchRow[];
    try {
      rows = compact(await this.retryDeadlocks(run));
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
      rows = await this.retryDeadlocks(run).then(compact, (again: unknown) => {
        if (errorCode(again) === FOREIGN_KEY_VIOLATION) return [];
        throw again;
      });
    }
    if (this.onStored && rows.some((r) => !r.duplicate)) this.onStored();
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
   * A page of a chat's messages, always returned oldest first. `before`: the messages just
   * older than that seq; `after`: the ones just newer; neither: the latest. At most `limit`
   * messages, and at most `maxBytes` of them as JSON (estimated: see pageBytes below), but
   * always at least one, so that paging moves on: Postgres adds the sizes up and returns only
   * what fits, so a page of large messages never leaves the database whole. `hasMore` is true
   * when more messages exist beyond the page in its direction (cut by count or by bytes).
   *
   * Like every user-scoped query, it carries the owner in its WHERE clause: a chat that is not
   * `userId`'s reads as empty, so a service that forgot its ownership check still could not
   * leak another user's messages. With `signal` aborted, the query is not sent (db/abortable.ts).
   */
  async page(
    userId: string,
    chatId: string,
    limit: number,
    position: { before?: number | undefined; after?: number | undefined } = {},
    options: { maxBytes?: number; signal?: AbortSignal | undefined } = {},
  ): Promise<{ rows: ChatMessageRow[]; hasMore: boolean }> {
    const sql = this.sql;
    const forward = position.after !== undefined;
    const maxBytes = options.maxBytes ?? Limits.MAX_PAGE_BYTES;
    const bound =
      position.after !== undefined
        ? sql`and m.seq > ${position.after}`
        : position.before !== undefined
          ? sql`and m.seq < ${position.before}`
          : sql``;
    const direction = forward ? sql`asc` : sql`desc`;
    // At most limit + 1 rows leave the index; a recursive walk then adds up their JSON sizes
    // in page order (jsonb's text form escapes like JSON.stringify: U+0001 is six bytes), each
    // with its other fields (ids, seq, dates: PER_MESSAGE_BYTES), and stops at the first row
    // past the budget, so no more rows are measured than are returned, plus one.
    const size = (m: string) =>
      sql.unsafe(
        `octet_length(${m}.message::text) + octet_length(${m}.client_id) + ${PER_MESSAGE_BYTES}`,
      );
    const query = sql<PageRow[]>`
      with recursive page as (
        select m.id, m.session_id, m.seq, m.client_id, m.message, m.created_at
          from public.chat_memory m
         where m.session_id = ${chatId}
           and m.session_id in (select c.id from public.chat_sessions c
                                 where c.id = ${chatId} and c.user_id = ${userId})
           ${bound}
         order by m.seq ${direction}
         limit ${limit + 1}
      ), numbered as (
        select p.*, row_number() over (order by p.seq ${direction}) as rn,
               count(*) over () as page_rows
          from page p
      ), walk as (
        select n.rn, ${size("n")} as total from numbered n where n.rn = 1
        union all
        select n.rn, w.total + ${size("n")}
          from walk w join numbered n on n.rn = w.rn + 1
         where w.total <= ${maxBytes} and n.rn <= ${limit}
      )
      select n.id, n.session_id, n.seq, n.client_id, n.message, n.created_at, n.page_rows
        from numbered n join walk w on w.rn = n.rn
       where n.rn = 1 or w.total <= ${maxBytes}
       order by n.seq asc`;
    const rows = compact(
      await this.timed("message_page", () => unlessAborted(query, options.signal)),
    );
    return {
      rows: rows.map((r) => ({
        id: r.id,
        sessionId: r.session_id,
        seq: Number(r.seq),
        clientId: r.client_id,
        message: r.message,
        createdAt: new Date(r.created_at),
      })),
      hasMore: rows.length > 0 && Number(rows[0]?.page_rows) > rows.length,
    };
  }
}

/**
 * What a message adds to a page's JSON besides its content and clientId: the keys, the two
 * UUIDs, seq, role and the timestamp (about 150 bytes), rounded up.
 */
const PER_MESSAGE_BYTES = 200;

type PageRow = {
  id: string;
  session_id: string;
  seq: string;
  client_id: string;
  message: MessageJson;
  created_at: string;
  page_rows: string;
};

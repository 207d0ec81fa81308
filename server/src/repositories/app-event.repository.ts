/**
 * The queries of the transactional outbox (app_events, drizzle/0009 and 0011) and of its delivery:
 * chats are taken under a lease (app_event_leases) by one node at a time, their events read in
 * order, and delivered events deleted in batches. The rules (backoff, giving up, order, when a
 * lease is trusted) are in services/app-event-delivery.ts.
 *
 * The driver runs with fetch_types off (db/client.ts): lists go in as one jsonb parameter.
 */
import type postgres from "postgres";

/** A pending event, as the delivery reads it. */
export interface PendingEvent {
  id: string;
  eventId: string;
  type: string;
  data: unknown;
  createdAt: string;
  attempts: number;
  /** Milliseconds since the event was stored or last requeued: its retry window so far. */
  retryAgeMs: number;
}

/** A delivery whose retries ran out, for the service API. */
export interface FailedEvent {
  id: string;
  type: string;
  chatId: string;
  attempts: number;
  lastError: string | null;
  lastAttemptAt: string | null;
  failedAt: string;
  createdAt: string;
}

type PendingRow = {
  chat_id: string;
  id: string;
  event_id: string;
  type: string;
  data: unknown;
  created_at: string;
  attempts: number;
  retry_age_ms: number;
};

/** What a node's delivery hands back in one batch: see AppEventRepository.finish. */
export interface FinishBatch {
  /** Delivered events (app_events ids): deleted. */
  delivered: string[];
  /** Failed attempts; `retryInMs` undefined: the retries ran out, the event is marked failed. */
  failures: { id: string; chatId: string; error: string; retryInMs: number | undefined }[];
  /** Chats this node is done with: their leases are dropped (any node may take them at once). */
  released: string[];
  /** Chats whose head event failed: their leases become a wait of `retryInMs` for every node. */
  backedOff: { chatId: string; retryInMs: number }[];
}

const pendingColumns = (sql: postgres.Sql) => sql`
  e.chat_id, e.id::text as id, e.event_id, e.type, e.data,
  to_char(e.created_at at time zone 'UTC', ${sql.unsafe(iso)}) as created_at, e.attempts,
  (extract(epoch from clock_timestamp() - coalesce(e.requeued_at, e.created_at)) * 1000)::float8
    as retry_age_ms`;

function toPending(r: PendingRow): PendingEvent {
  return {
    id: r.id,
    eventId: r.event_id,
    type: r.type,
    data: r.data,
    createdAt: r.created_at,
    attempts: r.attempts,
    retryAgeMs: r.retry_age_ms,
  };
}

const iso = `'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'`;

export class AppEventRepository {
  constructor(private readonly sql: postgres.Sql) {}

  /** Stores an event that has no row of its own; false when enqueueing is off (no backend). */
  async enqueue(chatId: string, type: string, data: Record<string, unknown>): Promise<boolean> {
    const [row] = await this.sql<{ event_id: string | null }[]>`
      select public.enqueue_app_event(${chatId}::uuid, ${type}, ${JSON.stringify(data)}::jsonb) as event_id`;
    return Boolean(row?.event_id);
  }

  /** Turns enqueueing on or off for the whole database (the triggers read it). */
  async setEnabled(enabled: boolean): Promise<void> {
    if (enabled) {
      await this.sql`
        insert into public.app_event_settings (id, enabled) values (true, true)
        on conflict (id) do update set enabled = true where not app_event_settings.enabled`;
    } else {
      // Usually off already: no write then.
      await this.sql`update public.app_event_settings set enabled = false where enabled`;
    }
  }

  /**
   * Takes up to `limit` chats that have pending events and no live lease (nobody delivering them,
   * no backoff running), leases them to `nodeId` for `leaseMs`, and returns each one's first
   * `batch` pending events in order. Oldest chats first. Two nodes claiming at once never get
   * the same chat: the upsert's row lock serialises them, and the second sees a live lease.
   * `scan` bounds the pending rows looked at (due, of chats nobody holds), in the pending index's
   * order, so a claim stays cheap under a large backlog. A chat waiting out a backoff has its
   * rows moved past its next attempt (finish), so they are not even looked at.
   */
  async claim(
    nodeId: string,
    options: { limit: number; leaseMs: number; batch: number; scan: number },
  ): Promise<Map<string, PendingEvent[]>> {
    const rows = await this.sql<PendingRow[]>`
      with candidates as (
        select chat_id from (
          select e.chat_id, e.id from public.app_events e
           where e.failed_at is null and e.next_attempt_at <= now()
             and not exists (select 1 from public.app_event_leases l
                              where l.chat_id = e.chat_id and l.lease_until > now())
           order by e.next_attempt_at
           limit ${options.scan}
        ) x
        group by chat_id
        order by min(id)
        limit ${options.limit}
      ), claimed as (
        insert into public.app_event_leases (chat_id, node_id, lease_until)
        select chat_id, ${nodeId}, now() + ${options.leaseMs} * interval '1 millisecond'
          from candidates
        on conflict (chat_id) do update
          set node_id = excluded.node_id, lease_until = excluded.lease_until
          where app_event_leases.lease_until <= now()
        returning chat_id
      )
      select ${pendingColumns(this.sql)}
        from claimed c
        cross join lateral (
          select * from public.app_events e
           where e.chat_id = c.chat_id and e.failed_at is null
           order by e.id
           limit ${options.batch}
        ) e
       order by e.chat_id, e.id`;
    const byChat = new Map<string, PendingEvent[]>();
    for (const r of rows) {
      const list = byChat.get(r.chat_id);
      if (list) list.push(toPending(r));
      else byChat.set(r.chat_id, [toPending(r)]);
    }
    return byChat;
  }

  /** The chat's next pending events after `afterId`, in order (its holder reads on). */
  async nextBatch(chatId: string, afterId: string, limit: number): Promise<PendingEvent[]> {
    const rows = await this.sql<PendingRow[]>`
      select ${pendingColumns(this.sql)}
        from public.app_events e
       where e.chat_id = ${chatId} and e.failed_at is null and e.id > ${afterId}::bigint
       order by e.id
       limit ${limit}`;
    return rows.map(toPending);
  }

  /**
   * One statement for a batch of outcomes of `nodeId`'s deliveries: deletes the delivered events,
   * records the failed attempts, and drops or backs off the leases (only where `nodeId` still
   * holds them). Returns, per deleted event, seconds from its storing to now (the latency).
   * A chat is in `released` or `backedOff`, never both.
   */
  async finish(nodeId: string, batch: FinishBatch): Promise<number[]> {
    const json = JSON.stringify({
      d: batch.delivered,
      f: batch.failures.map((f) => ({ id: f.id, e: f.error, r: f.retryInMs ?? null })),
      r: batch.released,
      b: batch.backedOff.map((b) => ({ c: b.chatId, r: b.retryInMs })),
    });
    const rows = await this.sql<{ seconds: number }[]>`
      with input as (select ${json}::jsonb as j),
      deleted as (
        delete from public.app_events
         where id in (select jsonb_array_elements_text(j->'d')::bigint from input)
        returning extract(epoch from clock_timestamp() - created_at)::float8 as seconds
      ), failures as (
        select (f->>'id')::bigint as id, f->>'e' as error, (f->>'r')::float8 as retry_ms
          from input, jsonb_array_elements(j->'f') f
      ), failed as (
        update public.app_events a
           set attempts = a.attempts + 1, last_error = f.error, last_attempt_at = now(),
               failed_at = case when f.retry_ms is null then now() end,
               next_attempt_at = case when f.retry_ms is null then a.next_attempt_at
                 else clock_timestamp() + f.retry_ms * interval '1 millisecond' end
          from failures f
         where a.id = f.id
      ), released as (
        delete from public.app_event_leases
         where node_id = ${nodeId}
           and chat_id in (select jsonb_array_elements_text(j->'r')::uuid from input)
      ), later as (
        -- A chat in backoff: its other pending events wait too (out of the claims' scan).
        update public.app_events a
           set next_attempt_at = clock_timestamp() + (b->>'r')::float8 * interval '1 millisecond'
          from input, jsonb_array_elements(j->'b') b
         where a.chat_id = (b->>'c')::uuid and a.failed_at is null
           and a.id not in (select id from failures)
      ), backed_off as (
        update public.app_event_leases l
           set node_id = null,
               lease_until = clock_timestamp() + (b->>'r')::float8 * interval '1 millisecond'
          from input, jsonb_array_elements(j->'b') b
         where l.chat_id = (b->>'c')::uuid and l.node_id = ${nodeId}
      )
      -- Every data-modifying CTE runs to completion whether or not it is read.
      select seconds from deleted`;
    return rows.map((r) => r.seconds);
  }

  /**
   * Extends the leases of `chatIds` that `nodeId` still holds by `leaseMs`; returns their chats
   * (a chat missing from the answer is no longer this node's). Only the chats the node is
   * delivering: a lease won by a claim whose answer was lost lapses on its own.
   */
  async renew(nodeId: string, chatIds: string[], leaseMs: number): Promise<string[]> {
    const rows = await this.sql<{ chat_id: string }[]>`
      update public.app_event_leases
         set lease_until = now() + ${leaseMs} * interval '1 millisecond'
       where node_id = ${nodeId} and lease_until > now()
         and chat_id in (select jsonb_array_elements_text(${JSON.stringify(chatIds)}::jsonb)::uuid)
      returning chat_id`;
    return rows.map((r) => r.chat_id);
  }

  /** Drops every lease of `nodeId` (a clean stop: its deliveries ended). */
  async releaseAll(nodeId: string): Promise<void> {
    await this.sql`delete from public.app_event_leases where node_id = ${nodeId}`;
  }

  /** Events waiting to be delivered, and events whose retries ran out. */
  async counts(): Promise<{ pending: number; failed: number }> {
    const [row] = await this.sql<{ pending: number; failed: number }[]>`
      select (select count(*) from public.app_events where failed_at is null)::int as pending,
             (select count(*) from public.app_events where failed_at is not null)::int as failed`;
    return { pending: row?.pending ?? 0, failed: row?.failed ?? 0 };
  }

  /** Failed deliveries, oldest first, after the cursor `after` (an event id). */
  async listFailed(options: { after?: string; limit: number }): Promise<FailedEvent[]> {
    const after = options.after ? this.sql`and event_id > ${options.after}` : this.sql``;
    const rows = await this.sql<
      {
        event_id: string;
        type: string;
        chat_id: string;
        attempts: number;
        last_error: string | null;
        last_attempt_at: string | null;
        failed_at: string;
        created_at: string;
      }[]
    >`
      select event_id, type, chat_id, attempts, last_error,
             to_char(last_attempt_at at time zone 'UTC', ${this.sql.unsafe(iso)}) as last_attempt_at,
             to_char(failed_at at time zone 'UTC', ${this.sql.unsafe(iso)}) as failed_at,
             to_char(created_at at time zone 'UTC', ${this.sql.unsafe(iso)}) as created_at
        from public.app_events
       where failed_at is not null ${after}
       order by event_id
       limit ${options.limit}`;
    return rows.map((r) => ({
      id: `evt_${r.event_id}`,
      type: r.type,
      chatId: r.chat_id,
      attempts: r.attempts,
      lastError: r.last_error,
      lastAttemptAt: r.last_attempt_at,
      failedAt: r.failed_at,
      createdAt: r.created_at,
    }));
  }

  /**
   * Puts failed deliveries back in their chats' queues (all of them, or those with the given
   * event ids) with a fresh retry window. Returns how many. (Every node's delivery looks for
   * pending events at least every 250 ms.)
   */
  async requeue(eventIds: string[] | undefined): Promise<number> {
    const filter = eventIds
      ? this
          .sql`and event_id::text in (select jsonb_array_elements_text(${JSON.stringify(eventIds)}::text::jsonb))`
      : this.sql``;
    const [row] = await this.sql<{ requeued: number }[]>`
      with requeued as (
        update public.app_events
           set failed_at = null, attempts = 0, next_attempt_at = now(), requeued_at = now()
         where failed_at is not null ${filter}
        returning chat_id
      )
      select count(*)::int as requeued from requeued`;
    return row?.requeued ?? 0;
  }
}

/**
 * The queries of the transactional outbox (app_events, drizzle/0009_app_event_triggers.sql) and
 * of its delivery through graphile-worker. The rules (backoff, giving up, order) are in
 * services/app-event-delivery.ts.
 *
 * A few queries read graphile-worker's private tables (locks of dead nodes, which graphile-worker
 * itself would only release after 4 hours); the package version is pinned for that reason.
 */
import type postgres from "postgres";

/** graphile-worker's task that delivers one chat's pending events. */
export const DELIVERY_TASK = "deliver_app_events";
/** Queue and job key of a chat's delivery job: one at a time per chat, on any node. */
export const chatQueue = (chatId: string) => `app_events:${chatId}`;

/** A pending event, as the delivery reads it. */
export interface PendingEvent {
  id: string;
  eventId: string;
  type: string;
  data: unknown;
  createdAt: string;
  attempts: number;
  /** Milliseconds until the next attempt is due (<= 0: due now). */
  dueInMs: number;
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
  id: string;
  event_id: string;
  type: string;
  data: unknown;
  created_at: string;
  attempts: number;
  due_in_ms: number;
  retry_age_ms: number;
};

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

  /** The chat's oldest pending events, in delivery order. */
  async pending(chatId: string, limit: number): Promise<PendingEvent[]> {
    const rows = await this.sql<PendingRow[]>`
      select id::text, event_id, type, data,
             to_char(created_at at time zone 'UTC', ${this.sql.unsafe(iso)}) as created_at,
             attempts,
             (extract(epoch from next_attempt_at - clock_timestamp()) * 1000)::float8 as due_in_ms,
             (extract(epoch from clock_timestamp() - coalesce(requeued_at, created_at)) * 1000)::float8
               as retry_age_ms
        from public.app_events
       where chat_id = ${chatId} and failed_at is null
       order by app_events.id
       limit ${limit}`;
    return rows.map((r) => ({
      id: r.id,
      eventId: r.event_id,
      type: r.type,
      data: r.data,
      createdAt: r.created_at,
      attempts: r.attempts,
      dueInMs: r.due_in_ms,
      retryAgeMs: r.retry_age_ms,
    }));
  }

  /** Removes a delivered event; returns seconds from its storing to now (the delivery latency). */
  async delivered(id: string): Promise<number | undefined> {
    const [row] = await this.sql<{ seconds: number }[]>`
      delete from public.app_events where id = ${id}
      returning extract(epoch from clock_timestamp() - created_at)::float8 as seconds`;
    return row?.seconds;
  }

  /**
   * Records a failed attempt. With `retryInMs`, the next attempt is due then; without, the
   * retries ran out and the event is marked failed (the chat's later events go on).
   */
  async attemptFailed(id: string, error: string, retryInMs: number | undefined): Promise<void> {
    if (retryInMs === undefined) {
      await this.sql`
        update public.app_events
           set attempts = attempts + 1, last_error = ${error}, last_attempt_at = now(),
               failed_at = now()
         where id = ${id}`;
    } else {
      await this.sql`
        update public.app_events
           set attempts = attempts + 1, last_error = ${error}, last_attempt_at = now(),
               next_attempt_at = clock_timestamp() + ${retryInMs} * interval '1 millisecond'
         where id = ${id}`;
    }
  }

  /**
   * (Re)schedules the chat's delivery job in `inMs` (replacing a waiting one: the head event's
   * backoff decides). Called from inside the running job, whose key graphile-worker then clears.
   */
  async schedule(chatId: string, inMs: number): Promise<void> {
    await this.sql`
      select graphile_worker.add_job(
        ${DELIVERY_TASK}, json_build_object('chatId', ${chatId}::uuid),
        queue_name => ${chatQueue(chatId)},
        run_at => clock_timestamp() + ${Math.max(0, Math.ceil(inMs))} * interval '1 millisecond',
        job_key => ${chatQueue(chatId)})`;
  }

  /**
   * Wakes the delivery of chats whose head event is overdue by more than `graceMs` (a job lost
   * or given up by graphile-worker, or a wake-up that came while the database was away).
   * Returns how many chats were woken.
   */
  async wakeOverdue(graceMs: number, limit: number): Promise<number> {
    const [row] = await this.sql<{ chats: number }[]>`
      with overdue as (
        select distinct chat_id from public.app_events
         where failed_at is null
           and next_attempt_at < clock_timestamp() - ${graceMs} * interval '1 millisecond'
         limit ${limit}
      ), scheduled as (
        select public.schedule_app_event_delivery(array(select chat_id from overdue))
         where exists (select 1 from overdue)
      )
      select (select count(*) from overdue)::int as chats, (select count(*) from scheduled)`;
    return row?.chats ?? 0;
  }

  /** This node's heartbeat (graphile-worker pool id). */
  async heartbeat(poolId: string): Promise<void> {
    await this.sql`
      insert into public.app_event_nodes (pool_id, heartbeat_at) values (${poolId}, now())
      on conflict (pool_id) do update set heartbeat_at = now()`;
  }

  /** Forgets this node (a clean stop: its jobs were finished or released). */
  async forget(poolId: string): Promise<void> {
    await this.sql`delete from public.app_event_nodes where pool_id = ${poolId}`;
  }

  /**
   * Releases the delivery jobs and chat queues locked by pools that are not alive: no heartbeat
   * within `nodeTimeoutMs`, and the lock older than that too (so a pool that just started and has
   * not beaten yet keeps its jobs). Returns the number of pools released.
   */
  async releaseDeadNodes(nodeTimeoutMs: number): Promise<number> {
    const [row] = await this.sql<{ released: number }[]>`
      with gone as (
        delete from public.app_event_nodes
         where heartbeat_at < now() - ${nodeTimeoutMs} * interval '1 millisecond'
      ), live as (
        select pool_id from public.app_event_nodes
         where heartbeat_at >= now() - ${nodeTimeoutMs} * interval '1 millisecond'
      ), orphans as (
        select j.locked_by
          from graphile_worker._private_jobs j
          join graphile_worker._private_tasks t on t.id = j.task_id
         where t.identifier = ${DELIVERY_TASK}
           and j.locked_by is not null
           and j.locked_at < now() - ${nodeTimeoutMs} * interval '1 millisecond'
           and j.locked_by not in (select pool_id from live)
        union
        select q.locked_by
          from graphile_worker._private_job_queues q
         where q.queue_name like 'app\\_events:%'
           and q.locked_by is not null
           and q.locked_at < now() - ${nodeTimeoutMs} * interval '1 millisecond'
           and q.locked_by not in (select pool_id from live)
      )
      select (select count(*) from orphans)::int as released,
             graphile_worker.force_unlock_workers(array(select locked_by from orphans))`;
    return row?.released ?? 0;
  }

  /** Releases the locks of a pool known to be stopped (this node's, before it starts anew). */
  async releasePool(poolId: string): Promise<void> {
    await this.sql`select graphile_worker.force_unlock_workers(array[${poolId}]::text[])`;
    await this.forget(poolId);
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
   * event ids) with a fresh retry window, and wakes their chats. Returns how many.
   */
  async requeue(eventIds: string[] | undefined): Promise<number> {
    const filter = eventIds ? this.sql`and event_id = any(${eventIds}::uuid[])` : this.sql``;
    const [row] = await this.sql<{ requeued: number }[]>`
      with requeued as (
        update public.app_events
           set failed_at = null, attempts = 0, next_attempt_at = now(), requeued_at = now()
         where failed_at is not null ${filter}
        returning chat_id
      ), scheduled as (
        select public.schedule_app_event_delivery(array(select distinct chat_id from requeued))
         where exists (select 1 from requeued)
      )
      select (select count(*) from requeued)::int as requeued, (select count(*) from scheduled)`;
    return row?.requeued ?? 0;
  }
}

/**
 * Delivers the transactional outbox (app_events) to the app's backend as signed webhooks. Runs in
 * every node. A node takes chats under a lease (app_event_leases: one holder per chat, across all
 * nodes), delivers each chat's events strictly in order and many chats at once, and hands the
 * outcomes back in batches (one statement deletes the delivered events and drops the leases).
 *
 * Why not a job queue (graphile-worker until drizzle/0011, figures in docs/benchmarks.md): its
 * add_job NOTIFYs from the inserting transaction, and notifying transactions commit one at a
 * time database-wide (single-row inserts ran at 0.22x); each chat's batch cost a job fetch and a
 * completion; its retries are uncapped and break the per-chat order; and a dead worker's jobs
 * stay locked for 4 hours. The project had already replaced its retries and its dead-worker
 * recovery; what was left of it (a per-chat mutex and a wake-up) is the lease and the loop below.
 *
 * Safety of the lease: the holder renews its leases every APP_WEBHOOK_NODE_TIMEOUT_MS / 5. It
 * trusts a lease for the node timeout counted from when it *sent* the claim or renewal (the
 * database counts from later), and aborts its attempts on a chat a fifth of that before the
 * lease could lapse. So when another node takes a lapsed chat over, no attempt of the old holder
 * is in flight.
 */
import { randomUUID } from "node:crypto";
import type { AppWebhookConfig } from "../config.js";
import type { Logger } from "../logger.js";
import type {
  AppEventRepository,
  FinishBatch,
  PendingEvent,
} from "../repositories/app-event.repository.js";
import { WebhookSender } from "./webhook-sender.js";

/** Events read per chat at once (the claim returns this many of each chat). */
const BATCH = 50;
/** Events one chat gets delivered before its lease is dropped and chats are claimed anew (fairness). */
const MAX_EVENTS_PER_HOLD = 500;
/** Pending rows one claim looks at, at most (of chats nobody holds). */
const CLAIM_SCAN = 1000;
/** With nothing to do, the delivery looks for due events this often (retries, other nodes' events). */
export const POLL_MS = 250;
/** The shortest time between two claims (wake-ups come with every stored batch). */
const MIN_CLAIM_GAP_MS = 5;

export interface AppEventDeliveryOptions {
  /** On a pool of its own, apart from the send path's: a slow receiver never holds a send's connection. */
  repository: AppEventRepository;
  webhook: AppWebhookConfig;
  logger: Logger;
  metrics: DeliveryMetrics;
}

/**
 * The metrics the delivery updates: the node's own (server/src/metrics.ts), or on a worker
 * thread a proxy that forwards the updates to them (app-event-delivery-thread.ts).
 */
export interface DeliveryMetrics {
  webhookDelivered: { inc(labels: { type: string }): void };
  webhookAttemptsFailed: { inc(labels: { type: string }): void };
  webhookGaveUp: { inc(labels: { type: string }): void };
  webhookLatency: { observe(seconds: number): void };
  webhookEventsPending: { set(value: number): void };
  webhookEventsFailed: { set(value: number): void };
}

/** The backoff before attempt `failures + 1`: first · 2^(failures−1), capped, ±10 % jitter. */
export function retryDelayMs(failures: number, firstMs: number, maxMs: number): number {
  const base = Math.min(maxMs, firstMs * 2 ** Math.min(Math.max(failures - 1, 0), 30));
  return Math.min(maxMs, Math.round(base * (0.9 + Math.random() * 0.2)));
}

/** A chat this node holds the lease of. */
interface Held {
  /** This node's clock: the lease is trusted until then (see the file's comment). */
  trustedUntil: number;
  /** Aborts the chat's attempt in progress: the lease ran short, or a hard stop. */
  abort: AbortController;
}

type Outcome = FinishBatch & { done: () => void };

export class AppEventDelivery {
  /** This process's lease holder id. */
  readonly nodeId = randomUUID();
  private readonly sender: WebhookSender;
  private readonly held = new Map<string, Held>();
  private readonly running = new Set<Promise<void>>();
  private stopping = false;
  private loopDone: Promise<void> = Promise.resolve();
  private wakeUp: (() => void) | undefined;
  private woken = false;
  private timers: NodeJS.Timeout[] = [];
  /** Outcomes waiting for the next finish statement (one runs at a time, in order). */
  private outcomes: Outcome[] = [];
  private flushing: Promise<void> | undefined;

  constructor(private readonly options: AppEventDeliveryOptions) {
    this.sender = new WebhookSender({
      ...options.webhook,
      maxSockets: options.webhook.concurrency,
    });
  }

  private get leaseMs(): number {
    return this.options.webhook.nodeTimeoutMs;
  }

  /** Turns enqueueing on and starts delivering. */
  async start(): Promise<void> {
    const { webhook, logger, repository } = this.options;
    await repository.setEnabled(true);
    const every = Math.max(100, this.leaseMs / 5);
    this.timers.push(setInterval(() => void this.renew(), every));
    this.timers.push(setInterval(() => void this.gauges(), every));
    this.timers.push(setInterval(() => this.cutShortLeases(), Math.min(250, every)));
    for (const t of this.timers) t.unref();
    this.loopDone = this.loop();
    logger.info({ url: redact(webhook.url) }, "webhooks: delivering to the app's backend");
  }

  /**
   * Something was stored (on this node): look for it now rather than at the next poll. Cheap and
   * idempotent; the send path calls it after each commit that made events.
   */
  wake(): void {
    this.woken = true;
    this.wakeUp?.();
  }

  /**
   * Graceful stop: no new chats; attempts in progress finish (or are aborted after at most 3 s
   * and retried by any node); outcomes are written; this node's leases are dropped.
   */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    for (const t of this.timers) clearInterval(t);
    this.wake();
    const grace = Math.min(this.options.webhook.timeoutMs, 3000);
    const timer = setTimeout(() => {
      for (const h of this.held.values()) h.abort.abort();
    }, grace);
    // Bounded: with the database away a query may wait for it (the process's own shutdown limit
    // is 10 s, main.ts); whatever is not written is redelivered after the leases lapse.
    const settled = (async () => {
      await this.loopDone;
      await Promise.all([...this.running]);
      await this.flushing;
    })();
    await Promise.race([settled, new Promise((r) => setTimeout(r, grace + 2000).unref())]);
    clearTimeout(timer);
    try {
      await Promise.race([
        this.options.repository.releaseAll(this.nodeId),
        new Promise((_, reject) => setTimeout(() => reject(new Error("timed out")), 1000).unref()),
      ]);
    } catch (err) {
      // The leases lapse on their own after APP_WEBHOOK_NODE_TIMEOUT_MS.
      this.options.logger.warn({ err }, "webhooks: could not drop this node's leases");
    }
    this.sender.close();
  }

  /** Claims chats while there are free slots and due events; sleeps until woken or the poll. */
  private async loop(): Promise<void> {
    const { repository, webhook, logger } = this.options;
    let errors = 0;
    let lastClaim = 0;
    while (!this.stopping) {
      this.woken = false;
      const free = webhook.concurrency - this.held.size;
      let full = false;
      if (free > 0) {
        // Wake-ups come with every stored batch: at most one claim per MIN_CLAIM_GAP_MS.
        const gap = lastClaim + MIN_CLAIM_GAP_MS - Date.now();
        if (gap > 0) await new Promise((r) => setTimeout(r, gap));
        const sentAt = Date.now();
        lastClaim = sentAt;
        try {
          const claimed = await repository.claim(this.nodeId, {
            limit: free,
            leaseMs: this.leaseMs,
            batch: BATCH,
            scan: CLAIM_SCAN,
          });
          errors = 0;
          for (const [chatId, events] of claimed) {
            if (this.stopping) break;
            const held: Held = {
              trustedUntil: sentAt + this.leaseMs,
              abort: new AbortController(),
            };
            this.held.set(chatId, held);
            const run = this.deliverChat(chatId, held, events).catch((err: unknown) =>
              logger.error({ err, chatId }, "webhooks: chat delivery failed"),
            );
            this.running.add(run);
            void run.finally(() => this.running.delete(run));
          }
          // Every free slot filled: there may be more waiting; go on once a slot frees.
          full = claimed.size === free;
        } catch (err) {
          errors++;
          logger.debug({ err }, "webhooks: claim failed (database unreachable?)");
          await this.sleep(Math.min(1000, 50 * 2 ** errors));
          continue;
        }
      }
      if (this.stopping) break;
      // Every slot busy: a slot that frees wakes the loop; else the poll finds retries that came
      // due and events stored by other nodes.
      await this.sleep(full || free <= 0 ? 60_000 : POLL_MS);
    }
  }

  /** Waits `ms`, or less if woken. */
  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.wakeUp = () => {
        this.wakeUp = undefined;
        done();
      };
      if (this.stopping || this.woken) this.wakeUp();
    });
  }

  /** One held chat: its events in order, until none is left, one fails, or the hold is long. */
  private async deliverChat(chatId: string, held: Held, first: PendingEvent[]): Promise<void> {
    const { repository, metrics, logger } = this.options;
    let events = first;
    let count = 0;
    let backedOff: { chatId: string; retryInMs: number } | undefined;
    let lost = false;
    const failures: FinishBatch["failures"] = [];
    try {
      for (;;) {
        const delivered: string[] = [];
        for (const event of events) {
          if (held.abort.signal.aborted) {
            lost = true;
            break;
          }
          const result = await this.sender.send(
            `evt_${event.eventId}`,
            { type: event.type, timestamp: event.createdAt, data: event.data },
            held.abort.signal,
          );
          if (result.ok) {
            delivered.push(event.id);
            metrics.webhookDelivered.inc({ type: event.type });
            count++;
            continue;
          }
          if (held.abort.signal.aborted) {
            // Not the receiver's fault: this node may no longer deliver the chat; the attempt is
            // not recorded (the next holder tries again, same webhook-id).
            lost = true;
            break;
          }
          metrics.webhookAttemptsFailed.inc({ type: event.type });
          const retryInMs = this.nextRetry(event);
          failures.push({ id: event.id, chatId, error: result.error, retryInMs });
          if (retryInMs === undefined) {
            metrics.webhookGaveUp.inc({ type: event.type });
            logger.error(
              { eventId: event.eventId, type: event.type, chatId, error: result.error },
              "webhooks: retries ran out; the event is listed in GET /service/v1/webhooks/failed",
            );
            continue;
          }
          logger.warn(
            {
              eventId: event.eventId,
              chatId,
              attempt: event.attempts + 1,
              retryInMs,
              error: result.error,
            },
            "webhooks: delivery failed; retrying",
          );
          backedOff = { chatId, retryInMs };
          break;
        }
        const last = events.at(-1);
        const more =
          !lost &&
          !backedOff &&
          !this.stopping &&
          events.length === BATCH &&
          count < MAX_EVENTS_PER_HOLD &&
          last !== undefined;
        if (!more) {
          // The last outcome of this hold: the deletes, the failures and the lease together.
          await this.finish({
            delivered,
            failures: failures.splice(0),
            released: lost || backedOff ? [] : [chatId],
            backedOff: backedOff ? [backedOff] : [],
          });
          return;
        }
        // Handed back without waiting (finishes run in order), then the next events of the chat.
        void this.finish({ delivered, failures: failures.splice(0), released: [], backedOff: [] });
        try {
          events = await repository.nextBatch(chatId, last.id, BATCH);
        } catch (err) {
          logger.debug({ err, chatId }, "webhooks: reading the chat's next events failed");
          events = [];
        }
        if (events.length === 0) {
          await this.finish({ delivered: [], failures: [], released: [chatId], backedOff: [] });
          return;
        }
      }
    } finally {
      this.held.delete(chatId);
      this.wake();
    }
  }

  /** Queues outcomes for the next finish statement; resolves once they are written. */
  private finish(batch: FinishBatch): Promise<void> {
    return new Promise((done) => {
      this.outcomes.push({ ...batch, done });
      if (!this.flushing) this.flushing = this.flush();
    });
  }

  /**
   * Writes queued outcomes, one statement at a time, in order: what queues up while one runs
   * goes in the next. A statement that fails (the database away) is retried until it is written
   * (or, at a stop, given up after a few tries): the chat's slot stays taken meanwhile, so its
   * lease is not dropped before its deletes are written.
   */
  private async flush(): Promise<void> {
    const { repository, metrics, logger } = this.options;
    let errors = 0;
    // Let outcomes of the same tick join.
    await new Promise((r) => setImmediate(r));
    while (this.outcomes.length > 0) {
      const batch = this.outcomes.splice(0);
      const merged: FinishBatch = { delivered: [], failures: [], released: [], backedOff: [] };
      for (const b of batch) {
        merged.delivered.push(...b.delivered);
        merged.failures.push(...b.failures);
        merged.released.push(...b.released);
        merged.backedOff.push(...b.backedOff);
      }
      for (;;) {
        try {
          const seconds = await repository.finish(this.nodeId, merged);
          for (const s of seconds) metrics.webhookLatency.observe(s);
          errors = 0;
          break;
        } catch (err) {
          errors++;
          if (this.stopping && errors >= 3) {
            // Stopping with the database away: the leases lapse on their own, and the events
            // not deleted are delivered again (same webhook-id) by the next holder.
            logger.warn(
              { err },
              "webhooks: outcomes not recorded at stop; they will be redelivered",
            );
            break;
          }
          logger.debug({ err }, "webhooks: recording outcomes failed; retrying");
          await new Promise((r) => setTimeout(r, Math.min(1000, 50 * 2 ** errors)));
        }
      }
      for (const b of batch) b.done();
    }
    this.flushing = undefined;
  }

  /** Extends this node's leases; a chat it no longer holds is aborted. */
  private async renew(): Promise<void> {
    if (this.stopping || this.held.size === 0) return;
    const sentAt = Date.now();
    try {
      const mine = new Set(
        await this.options.repository.renew(this.nodeId, [...this.held.keys()], this.leaseMs),
      );
      for (const [chatId, h] of this.held) {
        if (mine.has(chatId)) h.trustedUntil = Math.max(h.trustedUntil, sentAt + this.leaseMs);
        else if (h.trustedUntil < sentAt) h.abort.abort();
      }
    } catch (err) {
      this.options.logger.debug({ err }, "webhooks: lease renewal failed");
    }
  }

  /** Aborts the attempts on chats whose lease is within a fifth of lapsing (not renewed). */
  private cutShortLeases(): void {
    const limit = Date.now() + this.leaseMs / 5;
    for (const h of this.held.values()) if (h.trustedUntil < limit) h.abort.abort();
  }

  private async gauges(): Promise<void> {
    try {
      const counts = await this.options.repository.counts();
      this.options.metrics.webhookEventsPending.set(counts.pending);
      this.options.metrics.webhookEventsFailed.set(counts.failed);
    } catch (err) {
      this.options.logger.debug({ err }, "webhooks: counting the outbox failed");
    }
  }

  /** Milliseconds to the next attempt after this failure, or undefined: the retries ran out. */
  private nextRetry(event: PendingEvent): number | undefined {
    const { retryFirstDelayMs, retryMaxDelayMs, retryForSeconds } = this.options.webhook;
    const delay = retryDelayMs(event.attempts + 1, retryFirstDelayMs, retryMaxDelayMs);
    const left = retryForSeconds * 1000 - event.retryAgeMs;
    if (left <= 0) return undefined;
    return Math.min(delay, left);
  }
}

/** The URL without credentials or query (it may hold a token), for logs. */
function redact(url: string): string {
  const u = new URL(url);
  return `${u.protocol}//${u.host}${u.pathname}`;
}

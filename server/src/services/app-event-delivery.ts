/**
 * Delivers the transactional outbox (app_events) to the app's backend as signed webhooks. Runs
 * in every node; graphile-worker hands each chat's delivery job to one node at a time (a queue
 * per chat), so any node delivers and no event is delivered by two nodes at once.
 *
 * Why the job does its own retries: graphile-worker retries a failed job after exp(attempts)
 * seconds, uncapped (hours after a few failures), and lets the queue's next job run meanwhile,
 * which would break the per-chat order. So the job delivers its chat's events strictly in order,
 * stops at the first failure, records it on the event and reschedules itself after a capped
 * exponential backoff (APP_WEBHOOK_RETRY_*). graphile-worker keeps a dead node's jobs locked for
 * 4 hours; every node therefore beats a heartbeat and releases the locks of pools that stopped
 * beating for APP_WEBHOOK_NODE_TIMEOUT_MS (graphile_worker.force_unlock_workers).
 */
import { EventEmitter } from "node:events";
import { Logger as GraphileLogger, type JobHelpers, type Runner, run } from "graphile-worker";
import type { AppWebhookConfig } from "../config.js";
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";
import {
  type AppEventRepository,
  DELIVERY_TASK,
  type PendingEvent,
} from "../repositories/app-event.repository.js";
import { WebhookSender } from "./webhook-sender.js";

/** Events one job reads at once; it goes on reading until the chat is drained or an event fails. */
const BATCH = 20;
/** Events one job delivers before it yields its worker to other chats (it reschedules itself). */
const MAX_EVENTS_PER_JOB = 200;
/** How long an overdue event may wait for its wake-up before the sweep wakes its chat. */
const OVERDUE_GRACE_MS = 5000;

export interface AppEventDeliveryOptions {
  /** graphile-worker's own connections (LISTEN and job fetches); the outbox uses `repository`. */
  databaseUrl: string;
  /** On a pool of its own, apart from the send path's: a slow receiver never holds a send's connection. */
  repository: AppEventRepository;
  webhook: AppWebhookConfig;
  logger: Logger;
  metrics: Metrics;
}

/** The backoff before attempt `failures + 1`: first · 2^(failures−1), capped, ±10 % jitter. */
export function retryDelayMs(failures: number, firstMs: number, maxMs: number): number {
  const base = Math.min(maxMs, firstMs * 2 ** Math.min(Math.max(failures - 1, 0), 30));
  return Math.min(maxMs, Math.round(base * (0.9 + Math.random() * 0.2)));
}

export class AppEventDelivery {
  private readonly sender: WebhookSender;
  private runner: Runner | undefined;
  private poolId: string | undefined;
  private timer: NodeJS.Timeout | undefined;
  /** When this node's heartbeat last reached the database (its own clock). */
  private lastBeat = 0;
  /** Aborts every delivery in progress: the node lost its heartbeat (others may take over). */
  private cutOff = new AbortController();
  private stopping = false;

  constructor(private readonly options: AppEventDeliveryOptions) {
    this.sender = new WebhookSender(options.webhook);
  }

  /**
   * Installs or updates graphile-worker's schema, turns enqueueing on and starts delivering.
   * Resolves once the worker runs.
   */
  async start(): Promise<void> {
    const { webhook, logger, repository } = this.options;
    await this.startRunner();
    await repository.setEnabled(true);
    this.timer = setInterval(() => void this.maintain(), Math.max(100, webhook.nodeTimeoutMs / 5));
    this.timer.unref();
    logger.info({ url: redact(webhook.url) }, "webhooks: delivering to the app's backend");
  }

  private async startRunner(): Promise<void> {
    const { webhook, logger } = this.options;
    const events = new EventEmitter();
    // The pool's id is what graphile-worker writes in locked_by: beat under it at once.
    events.on("pool:create", ({ workerPool }: { workerPool: { id: string } }) => {
      this.poolId = workerPool.id;
      void this.beat();
    });
    const runner = await run({
      connectionString: withAsyncCommit(this.options.databaseUrl),
      // One per concurrent job, one for LISTEN, one spare.
      maxPoolSize: webhook.concurrency + 2,
      concurrency: webhook.concurrency,
      noHandleSignals: true,
      // Retries that come due are found by polling (new jobs by LISTEN/NOTIFY): a wait of at
      // most this on top of the backoff.
      pollInterval: Math.min(1000, webhook.retryFirstDelayMs),
      // On shutdown, deliveries in progress get this long before they are aborted (and retried
      // by any node): short enough for the process's 10 s shutdown limit (main.ts).
      gracefulShutdownAbortTimeout: Math.min(webhook.timeoutMs, 3000),
      events,
      logger: graphileLogger(logger),
      // Batched completion: besides fewer round trips, a batch that cannot be recorded (the
      // database away) stops the pool, which restart() replaces. Unbatched, graphile-worker
      // 0.17 leaves that failure as an unhandled rejection, which would end the process.
      preset: { worker: { completeJobBatchDelay: 0, failJobBatchDelay: 0 } },
      taskList: {
        [DELIVERY_TASK]: async (payload, helpers) => this.deliverChat(payload, helpers),
      },
    });
    this.runner = runner;
    // graphile-worker stops its pool when it cannot record a job's outcome for a while (the
    // database away): this node then starts a new pool, so it goes on delivering once it is back.
    runner.promise.then(
      () => this.restart(runner, undefined),
      (err: unknown) => this.restart(runner, err),
    );
  }

  private async restart(previous: Runner, err: unknown): Promise<void> {
    if (this.stopping || this.runner !== previous) return;
    const { logger, repository } = this.options;
    logger.warn({ err }, "webhooks: the delivery worker stopped; restarting it");
    const deadPool = this.poolId;
    for (let attempt = 0; !this.stopping; attempt++) {
      await new Promise((r) => setTimeout(r, Math.min(5000, 250 * 2 ** attempt)));
      if (this.stopping) return;
      try {
        // The stopped pool runs nothing any more: its locks are released at once.
        if (deadPool) await repository.releasePool(deadPool);
        await this.startRunner();
        return;
      } catch (e) {
        logger.debug({ err: e }, "webhooks: restart failed; retrying");
      }
    }
  }

  /**
   * Graceful stop: no new jobs; deliveries in progress finish (or are aborted after the request
   * timeout, then retried by any node); this node's heartbeat is removed.
   */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    if (this.timer) clearInterval(this.timer);
    try {
      await this.runner?.stop();
    } catch (err) {
      this.options.logger.warn({ err }, "webhooks: worker stop failed");
    }
    if (this.poolId) await this.options.repository.forget(this.poolId).catch(() => {});
  }

  /** Heartbeat, takeover of dead nodes' chats, overdue wake-ups and the gauges. */
  private async maintain(): Promise<void> {
    const { repository, webhook, metrics, logger } = this.options;
    await this.beat();
    if (this.stopping) return;
    try {
      const released = await repository.releaseDeadNodes(webhook.nodeTimeoutMs);
      if (released > 0) logger.warn({ released }, "webhooks: took over the chats of dead nodes");
      await repository.wakeOverdue(OVERDUE_GRACE_MS, 1000);
      const counts = await repository.counts();
      metrics.webhookEventsPending.set(counts.pending);
      metrics.webhookEventsFailed.set(counts.failed);
    } catch (err) {
      logger.debug({ err }, "webhooks: maintenance failed (database unreachable?)");
    }
  }

  private async beat(): Promise<void> {
    if (!this.poolId || this.stopping) return;
    try {
      await this.options.repository.heartbeat(this.poolId);
      this.lastBeat = Date.now();
      if (this.cutOff.signal.aborted) this.cutOff = new AbortController();
    } catch (err) {
      // Cut off from the database: after half the node timeout the other nodes may soon take
      // over this node's chats, so its deliveries stop now (no event delivered twice at once).
      if (this.heartbeatStale()) this.cutOff.abort();
      this.options.logger.debug({ err }, "webhooks: heartbeat failed");
    }
  }

  private heartbeatStale(): boolean {
    return Date.now() - this.lastBeat > this.options.webhook.nodeTimeoutMs / 2;
  }

  /** The job of one chat: its pending events, in order, until one fails or none is left. */
  private async deliverChat(payload: unknown, helpers: JobHelpers): Promise<void> {
    const chatId = (payload as { chatId?: unknown } | null)?.chatId;
    if (typeof chatId !== "string") return;
    const { repository, metrics, logger } = this.options;
    let delivered = 0;
    while (delivered < MAX_EVENTS_PER_JOB) {
      const events = await repository.pending(chatId, BATCH);
      if (events.length === 0) return;
      // A short batch was all there was. An event stored after that read needs no second look:
      // its trigger found this job running and queued a new one behind it.
      const last = events.length < BATCH;
      for (const event of events) {
        if (event.dueInMs > 0) {
          await repository.schedule(chatId, event.dueInMs);
          return;
        }
        if (this.heartbeatStale()) {
          // Thrown: graphile-worker retries the job; by then this node beats again or another
          // node has taken over.
          throw new Error("webhooks: this node's heartbeat is stale; not delivering");
        }
        const result = await this.sender.send(
          `evt_${event.eventId}`,
          { type: event.type, timestamp: event.createdAt, data: event.data },
          AbortSignal.any([
            this.cutOff.signal,
            helpers.abortSignal ?? new AbortController().signal,
          ]),
        );
        if (result.ok) {
          const seconds = await repository.delivered(event.id);
          metrics.webhookDelivered.inc({ type: event.type });
          if (seconds !== undefined) metrics.webhookLatency.observe(seconds);
          delivered++;
          continue;
        }
        metrics.webhookAttemptsFailed.inc({ type: event.type });
        const retryInMs = this.nextRetry(event);
        await repository.attemptFailed(event.id, result.error, retryInMs);
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
        await repository.schedule(chatId, retryInMs);
        return;
      }
      if (last) return;
    }
    // A long backlog: yield this worker to other chats, and carry on right after.
    await repository.schedule(chatId, 0);
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

/**
 * The delivery's own writes (job locks and completions, deleting a delivered event, recording a
 * failure, heartbeats) commit asynchronously: they do not wait for the WAL flush. Safe for
 * at-least-once: a write lost in a database crash only means an event delivered again (same
 * webhook-id) or a wake-up that the overdue sweep redoes. The events themselves are written by
 * the message's own, synchronous, transaction. Without this every delivered event would wait for
 * several flushes, and the outbox could not keep up with the rate messages are stored at.
 */
function withAsyncCommit(databaseUrl: string): string {
  const url = new URL(databaseUrl);
  const options = url.searchParams.get("options");
  url.searchParams.set("options", `${options ? `${options} ` : ""}-c synchronous_commit=off`);
  return url.toString();
}

/** The URL without credentials or query (it may hold a token), for logs. */
function redact(url: string): string {
  const u = new URL(url);
  return `${u.protocol}//${u.host}${u.pathname}`;
}

/** graphile-worker's log lines through pino. */
function graphileLogger(logger: Logger) {
  return new GraphileLogger((scope) => (level, message, meta) => {
    const entry = { scope, ...meta };
    if (level === "error") logger.error(entry, message);
    else if (level === "warning") logger.warn(entry, message);
    else if (level === "info") logger.debug(entry, message);
    else logger.trace(entry, message);
  });
}

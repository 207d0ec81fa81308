/**
 * The outbox's delivery (AppEventDelivery) on a worker thread of its own (APP_WEBHOOK_THREAD,
 * default on): its own event loop, so on a saturated node storing messages and delivering their
 * events no longer compete for one core (figures in docs/benchmarks.md, "Delivery on its own
 * thread"). Same surface as the in-process delivery: start(), wake(), stop().
 *
 * The worker (app-event-delivery-worker.ts) has its own database pool (the options of
 * outboxDatabase below, as in-process) and its own logger (same level and format). Its metric
 * updates come back in batches and are applied to this node's prom-client metrics, so /metrics
 * is unchanged. A worker that dies is logged and restarted (bounded backoff); its leases lapse
 * after APP_WEBHOOK_NODE_TIMEOUT_MS and its chats are taken over, so nothing is delivered twice
 * at once and each chat stays in order (an event it had sent but not recorded is sent again,
 * same webhook-id).
 */
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";
import { Worker } from "node:worker_threads";
import type { AppWebhookConfig } from "../config.js";
import { createDatabase, type DatabaseHandle } from "../db/client.js";
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";

/**
 * The delivery's own pool. Its writes (claims, leases, deleting delivered events, recording
 * failures) commit asynchronously: they do not wait for the WAL flush. Safe for at-least-once:
 * a write lost in a database crash only means an event delivered again (same webhook-id) or a
 * lease that lapses. The events themselves are written by the message's own, synchronous,
 * transaction. Connections: a few for the chats delivered at once (reading their next events),
 * the claims, the outcomes and the lease renewals.
 */
export function outboxDatabase(databaseUrl: string, config: AppWebhookConfig): DatabaseHandle {
  return createDatabase(databaseUrl, {
    max: Math.min(config.concurrency, 8) + 3,
    settings: { synchronous_commit: "off" },
    // Caught up within a second or so of Postgres' return, not after the driver's up-to-20 s
    // reconnect backoff (measured: 18–30 s catch-ups before this cap, docs/benchmarks.md).
    maxReconnectDelaySeconds: 1,
  });
}

/** What the worker is started with (workerData). */
export interface DeliveryWorkerData {
  databaseUrl: string;
  webhook: AppWebhookConfig;
  logLevel: string;
  /** One Int32: 1 while a wake message is on its way (at most one is). */
  wakeFlag: SharedArrayBuffer;
}

/** The metrics the worker may update (DeliveryMetrics), by their field in Metrics. */
export const DELIVERY_METRICS = [
  "webhookDelivered",
  "webhookAttemptsFailed",
  "webhookGaveUp",
  "webhookLatency",
  "webhookEventsPending",
  "webhookEventsFailed",
] as const;
export type DeliveryMetricName = (typeof DELIVERY_METRICS)[number];

/** One metric update: `inc` by value (with labels), `observe` a value, `set` a gauge. */
export interface MetricOp {
  metric: DeliveryMetricName;
  op: "inc" | "observe" | "set";
  labels?: { type: string };
  value: number;
}

export type ToWorker = { type: "wake" } | { type: "stop" } | { type: "crash" };
export type FromWorker =
  | { type: "started"; threadId: number }
  | { type: "start-failed"; message: string }
  | { type: "metrics"; ops: MetricOp[] }
  | { type: "stopped" };

export interface AppEventDeliveryThreadOptions {
  databaseUrl: string;
  webhook: AppWebhookConfig;
  logger: Logger;
  metrics: Metrics;
}

/** Restarts after a crash wait this long, doubling per crash in a row, up to RESTART_MAX_MS. */
const RESTART_FIRST_MS = 250;
const RESTART_MAX_MS = 30_000;
/** A worker that ran this long resets the backoff. */
const HEALTHY_MS = 60_000;

export class AppEventDeliveryThread {
  private worker: Worker | undefined;
  private wakeFlag = new Int32Array(new SharedArrayBuffer(4));
  private stopping = false;
  private crashes = 0;
  private restartTimer: NodeJS.Timeout | undefined;
  private stopped: Promise<void> | undefined;
  /** The running worker's thread id (for logs and tests); undefined between workers. */
  threadId: number | undefined;
  /** Workers started after a crash (for tests and logs). */
  restarts = 0;

  constructor(private readonly options: AppEventDeliveryThreadOptions) {}

  /** Starts the worker; resolves once it delivers (enqueueing is on), rejects if it cannot. */
  start(): Promise<void> {
    return this.spawn(false);
  }

  /** Something was stored on this node: one message to the worker, unless one is on its way. */
  wake(): void {
    const worker = this.worker;
    if (!worker || this.stopping) return;
    if (Atomics.exchange(this.wakeFlag, 0, 1) === 0)
      worker.postMessage({ type: "wake" } satisfies ToWorker);
  }

  /**
   * Graceful stop, as in-process: the worker's delivery stops (attempts in progress finish or
   * are aborted after at most 3 s, outcomes are written, leases dropped), its pool closes; then
   * it is terminated (also if it does not answer within the bound).
   */
  stop(): Promise<void> {
    if (this.stopped) return this.stopped;
    this.stopping = true;
    clearTimeout(this.restartTimer);
    const worker = this.worker;
    this.stopped = (async () => {
      if (!worker) return;
      const bound = Math.min(this.options.webhook.timeoutMs, 3000) + 6000;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          this.options.logger.warn("webhooks: the delivery thread did not stop in time");
          resolve();
        }, bound);
        const done = () => {
          clearTimeout(timer);
          resolve();
        };
        worker.on("message", (m: FromWorker) => {
          if (m.type === "stopped") done();
        });
        worker.once("exit", done);
        worker.postMessage({ type: "stop" } satisfies ToWorker);
      });
      await worker.terminate();
    })();
    return this.stopped;
  }

  /** For tests: an uncaught error in the worker (it dies as from a bug; it is restarted). */
  crashForTest(): void {
    this.worker?.postMessage({ type: "crash" } satisfies ToWorker);
  }

  /** A worker; a restarted one that dies or cannot start is tried again (the first rejects). */
  private spawn(restarting: boolean): Promise<void> {
    const { logger, databaseUrl, webhook } = this.options;
    this.wakeFlag = new Int32Array(new SharedArrayBuffer(4));
    const data: DeliveryWorkerData = {
      databaseUrl,
      webhook,
      logLevel: logger.level,
      wakeFlag: this.wakeFlag.buffer as SharedArrayBuffer,
    };
    const entry = workerEntry();
    const worker = new Worker(entry.source, {
      eval: entry.eval,
      workerData: data,
      name: "webhook-delivery",
    });
    this.worker = worker;
    const startedAt = Date.now();
    let started = false;
    return new Promise<void>((resolve, reject) => {
      worker.on("message", (m: FromWorker) => {
        if (m.type === "metrics") this.apply(m.ops);
        else if (m.type === "started") {
          started = true;
          this.threadId = m.threadId;
          resolve();
        } else if (m.type === "start-failed") reject(new Error(m.message));
      });
      worker.on("error", (err) => {
        logger.error({ err }, "webhooks: the delivery thread failed");
      });
      worker.on("exit", (code) => {
        if (this.worker === worker) {
          this.worker = undefined;
          this.threadId = undefined;
        }
        if (!started) reject(new Error(`webhooks: the delivery thread exited (code ${code})`));
        if (this.stopping || (!started && !restarting)) return;
        // A crash: restart it (its leases lapse meanwhile; any node takes its chats over).
        if (started && Date.now() - startedAt > HEALTHY_MS) this.crashes = 0;
        this.crashes++;
        const delay = Math.min(RESTART_MAX_MS, RESTART_FIRST_MS * 2 ** (this.crashes - 1));
        logger.error(
          { code, restartInMs: delay },
          "webhooks: the delivery thread died; restarting it",
        );
        this.restartTimer = setTimeout(() => this.restart(), delay);
        this.restartTimer.unref();
      });
    });
  }

  private restart(): void {
    if (this.stopping) return;
    this.restarts++;
    this.spawn(true).catch((err: unknown) =>
      // Its exit schedules the next try.
      this.options.logger.error({ err }, "webhooks: the delivery thread could not start"),
    );
  }

  /** Applies the worker's metric updates to this node's metrics (only the delivery's). */
  private apply(ops: MetricOp[]): void {
    const m = this.options.metrics;
    for (const o of ops) {
      if (!DELIVERY_METRICS.includes(o.metric)) continue;
      switch (o.op) {
        case "inc":
          if (
            o.metric === "webhookDelivered" ||
            o.metric === "webhookAttemptsFailed" ||
            o.metric === "webhookGaveUp"
          ) {
            m[o.metric].inc({ type: o.labels?.type ?? "" }, o.value);
          }
          break;
        case "observe":
          if (o.metric === "webhookLatency") m.webhookLatency.observe(o.value);
          break;
        case "set":
          if (o.metric === "webhookEventsPending" || o.metric === "webhookEventsFailed") {
            m[o.metric].set(o.value);
          }
          break;
      }
    }
  }
}

/**
 * How the worker is started. Compiled (`.js`): its module, next to this one. From the sources
 * (`.ts`: npm start runs `node --import tsx`, and the tests run under vitest): Node 20's workers
 * do not get tsx's loader hooks from `--import tsx`, neither inherited nor in the worker's
 * execArgv (measured: ERR_UNKNOWN_FILE_EXTENSION), so a small script loads the module through
 * tsx's tsImport API, which registers the hooks in the worker itself.
 */
function workerEntry(): { source: URL | string; eval: boolean } {
  const module = new URL(import.meta.url);
  const fromSource = module.pathname.endsWith(".ts");
  const entry = new URL(`./app-event-delivery-worker.${fromSource ? "ts" : "js"}`, module);
  if (!fromSource) return { source: entry, eval: false };
  const require = createRequire(module);
  const pkgPath = require.resolve("tsx/package.json");
  const pkg = require(pkgPath) as { exports: Record<string, { import: { default: string } }> };
  const api = new URL(pkg.exports["./esm/api"]?.import.default ?? "", pathToFileURL(pkgPath)).href;
  const code = `import(${JSON.stringify(api)}).then((tsx) => tsx.tsImport(${JSON.stringify(entry.href)}, ${JSON.stringify(module.href)}));`;
  return { source: code, eval: true };
}

/**
 * The worker thread of AppEventDeliveryThread (app-event-delivery-thread.ts): runs the outbox's
 * delivery with its own pool and logger, and posts its metric updates to the node in batches.
 */
import { isMainThread, parentPort, threadId, workerData } from "node:worker_threads";
import { createLogger } from "../logger.js";
import { AppEventRepository } from "../repositories/app-event.repository.js";
import { AppEventDelivery, type DeliveryMetrics } from "./app-event-delivery.js";
import {
  type DeliveryMetricName,
  type DeliveryWorkerData,
  type FromWorker,
  type MetricOp,
  outboxDatabase,
  type ToWorker,
} from "./app-event-delivery-thread.js";

if (isMainThread || !parentPort)
  throw new Error("app-event-delivery-worker runs on a worker thread");
const port = parentPort;
const data = workerData as DeliveryWorkerData;
const wakeFlag = new Int32Array(data.wakeFlag);
const post = (m: FromWorker) => port.postMessage(m);

/** Metric updates since the last batch; increments of one counter and label are summed. */
let ops: MetricOp[] = [];
const increments = new Map<string, MetricOp>();
let flushTimer: NodeJS.Timeout | undefined;
/** Batches go out at most this often. */
const FLUSH_MS = 20;

function record(op: MetricOp): void {
  if (op.op === "inc") {
    const key = `${op.metric}\u0000${op.labels?.type ?? ""}`;
    const known = increments.get(key);
    if (known) known.value += op.value;
    else {
      increments.set(key, op);
      ops.push(op);
    }
  } else ops.push(op);
  flushTimer ??= setTimeout(flushMetrics, FLUSH_MS);
}

function flushMetrics(): void {
  clearTimeout(flushTimer);
  flushTimer = undefined;
  if (ops.length === 0) return;
  post({ type: "metrics", ops });
  ops = [];
  increments.clear();
}

const counter = (metric: DeliveryMetricName) => ({
  inc: (labels: { type: string }) => record({ metric, op: "inc", labels, value: 1 }),
});
const gauge = (metric: DeliveryMetricName) => ({
  set: (value: number) => record({ metric, op: "set", value }),
});
const metrics: DeliveryMetrics = {
  webhookDelivered: counter("webhookDelivered"),
  webhookAttemptsFailed: counter("webhookAttemptsFailed"),
  webhookGaveUp: counter("webhookGaveUp"),
  webhookLatency: {
    observe: (value) => record({ metric: "webhookLatency", op: "observe", value }),
  },
  webhookEventsPending: gauge("webhookEventsPending"),
  webhookEventsFailed: gauge("webhookEventsFailed"),
};

// A worker dying from a bug still hands over what it counted (then it dies as it would).
process.on("uncaughtException", (err) => {
  flushMetrics();
  throw err;
});

const logger = createLogger(data.logLevel);
const database = outboxDatabase(data.databaseUrl, data.webhook);
const delivery = new AppEventDelivery({
  repository: new AppEventRepository(database.sql),
  webhook: data.webhook,
  logger,
  metrics,
});

const started = delivery.start().then(
  () => {
    post({ type: "started", threadId });
    return true;
  },
  async (err: unknown) => {
    logger.error({ err }, "webhooks: start-up failed");
    post({ type: "start-failed", message: err instanceof Error ? err.message : String(err) });
    await database.close().catch(() => {});
    port.close();
    return false;
  },
);

let stopping = false;
port.on("message", (m: ToWorker) => {
  switch (m.type) {
    case "wake":
      // The next store on the node posts a new wake message.
      Atomics.store(wakeFlag, 0, 0);
      delivery.wake();
      break;
    case "stop":
      if (stopping) return;
      stopping = true;
      void (async () => {
        if (await started) await delivery.stop();
        flushMetrics();
        await database
          .close()
          .catch((err: unknown) =>
            logger.warn({ err }, "webhooks: closing the delivery's pool failed"),
          );
        post({ type: "stopped" });
        port.close();
      })();
      break;
    case "crash":
      setImmediate(() => {
        throw new Error("webhooks: delivery thread crash (requested by a test)");
      });
      break;
  }
});

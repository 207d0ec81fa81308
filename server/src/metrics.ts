/**
 * Prometheus metrics (prom-client), one registry per node so that tests can run several nodes
 * in one process. Served at GET /metrics.
 */
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";

export class Metrics {
  readonly registry = new Registry();

  readonly socketsConnected = new Gauge({
    name: "chat_sockets_connected",
    help: "Authenticated sockets connected to this node",
    registers: [this.registry],
  });

  readonly handshakes = new Counter({
    name: "chat_handshakes_total",
    help: "Socket handshakes by outcome (ok, the connect_error code, or abandoned: the client left mid-handshake)",
    labelNames: ["outcome"] as const,
    registers: [this.registry],
  });

  readonly commands = new Counter({
    name: "chat_commands_total",
    help: "Commands by name and outcome (ok or the error code)",
    labelNames: ["command", "outcome"] as const,
    registers: [this.registry],
  });

  readonly commandDuration = new Histogram({
    name: "chat_command_duration_seconds",
    help: "Time from receiving a command to sending its ack",
    labelNames: ["command"] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [this.registry],
  });

  readonly dbDuration = new Histogram({
    name: "chat_db_query_duration_seconds",
    help: "Database round trips on the message path, by operation",
    labelNames: ["operation"] as const,
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [this.registry],
  });

  readonly dbDeadlocks = new Counter({
    name: "chat_db_deadlocks_total",
    help: "Message batches chosen as a deadlock's victim and retried (two nodes writing for one user)",
    registers: [this.registry],
  });

  readonly adapterErrors = new Counter({
    name: "chat_adapter_errors_total",
    help: "Redis adapter and client errors (connection errors, failed publishes)",
    labelNames: ["kind"] as const,
    registers: [this.registry],
  });

  readonly resyncs = new Counter({
    name: "chat_connection_resyncs_total",
    help: "connection:resync sent to this node's sockets (events between nodes may have been lost), by reason",
    labelNames: ["reason"] as const,
    registers: [this.registry],
  });

  readonly slowConsumers = new Counter({
    name: "chat_slow_consumer_disconnects_total",
    help: "Sockets disconnected because more than SOCKET_MAX_BUFFERED_BYTES waited to be written to them",
    registers: [this.registry],
  });

  readonly webhookEventsPending = new Gauge({
    name: "chat_webhook_events_pending",
    help: "Events for the app's backend waiting to be delivered (sampled every few seconds)",
    registers: [this.registry],
  });

  readonly webhookEventsFailed = new Gauge({
    name: "chat_webhook_events_failed",
    help: "Events whose retries ran out, waiting to be requeued (POST /service/v1/webhooks/failed/requeue)",
    registers: [this.registry],
  });

  readonly webhookDelivered = new Counter({
    name: "chat_webhook_delivered_total",
    help: "Events delivered to the app's backend (a 2xx answer), by type",
    labelNames: ["type"] as const,
    registers: [this.registry],
  });

  readonly webhookAttemptsFailed = new Counter({
    name: "chat_webhook_failed_attempts_total",
    help: "Webhook attempts that failed (timeout, refused, 3xx/4xx/5xx) and will be retried or given up, by type",
    labelNames: ["type"] as const,
    registers: [this.registry],
  });

  readonly webhookGaveUp = new Counter({
    name: "chat_webhook_gave_up_total",
    help: "Events whose retries ran out (APP_WEBHOOK_RETRY_FOR_SECONDS), by type",
    labelNames: ["type"] as const,
    registers: [this.registry],
  });

  readonly webhookLatency = new Histogram({
    name: "chat_webhook_delivery_latency_seconds",
    help: "Time from storing an event (the message's transaction) to its webhook's 2xx answer",
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600],
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: "chat_" });
  }

  /** Times `work` into the database histogram. */
  async timeDb<T>(operation: string, work: () => Promise<T>): Promise<T> {
    const end = this.dbDuration.startTimer({ operation });
    try {
      return await work();
    } finally {
      end();
    }
  }
}

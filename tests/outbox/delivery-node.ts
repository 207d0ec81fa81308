/**
 * A delivering node in a process of its own, so that a test can SIGKILL it mid-delivery: the
 * outbox's delivery worker only (the socket server plays no part in delivering). Reads
 * DATABASE_URL and WEBHOOK_CONFIG (JSON AppWebhookConfig); prints `ready` once it delivers.
 */
import type { AppWebhookConfig } from "../../server/src/config.js";
import { createDatabase } from "../../server/src/db/client.js";
import { createLogger } from "../../server/src/logger.js";
import { Metrics } from "../../server/src/metrics.js";
import { AppEventRepository } from "../../server/src/repositories/app-event.repository.js";
import { AppEventDelivery } from "../../server/src/services/app-event-delivery.js";

const databaseUrl = process.env.DATABASE_URL ?? "";
const webhook = JSON.parse(process.env.WEBHOOK_CONFIG ?? "{}") as AppWebhookConfig;
const database = createDatabase(databaseUrl, { max: 6, maxReconnectDelaySeconds: 1 });
const delivery = new AppEventDelivery({
  repository: new AppEventRepository(database.sql),
  webhook,
  logger: createLogger("silent"),
  metrics: new Metrics(),
});
await delivery.start();
process.stdout.write("ready\n");

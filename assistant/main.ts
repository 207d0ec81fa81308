/**
 * `npm run assistant`: the reference assistant as its own process, for a chat server that
 * delivers its webhooks here (`APP_WEBHOOK_URL=http://127.0.0.1:3100/webhooks`, the same
 * `APP_WEBHOOK_SECRET` and `SERVICE_API_KEY` on both sides). docs/assistant.md has the rest.
 */
import { pino } from "pino";
import { AssistantConfigError, loadAssistantConfig } from "./config.js";
import { startAssistant } from "./index.js";

const logger = pino({ level: process.env.LOG_LEVEL ?? "info", base: { app: "assistant" } });

let config: ReturnType<typeof loadAssistantConfig>;
try {
  config = loadAssistantConfig();
} catch (e) {
  if (!(e instanceof AssistantConfigError)) throw e;
  console.error(`Configuration error: ${e.message}`);
  process.exit(1);
}

const running = await startAssistant(config, logger);
logger.info(
  {
    webhookUrl: running.webhookUrl,
    service: config.serviceUrl,
    model: config.model.kind === "demo" ? "demo" : config.model.model,
  },
  `assistant listening: set the chat server's APP_WEBHOOK_URL=${running.webhookUrl}`,
);

let stopping = false;
const stop = async (signal: string) => {
  if (stopping) return;
  stopping = true;
  logger.info({ signal }, "assistant shutting down");
  setTimeout(() => process.exit(1), 10_000).unref();
  await running.close();
  process.exit(0);
};
process.on("SIGTERM", () => void stop("SIGTERM"));
process.on("SIGINT", () => void stop("SIGINT"));

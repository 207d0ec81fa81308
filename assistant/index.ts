/**
 * Starting the assistant: `startAssistant` (what `npm run assistant` runs, main.ts) and
 * `startDevAssistant` (what the chat server's `npm start` runs in development, so that the demo
 * answers with no configuration).
 */
import { randomBytes } from "node:crypto";
import { Assistant, type Logger } from "./assistant.js";
import { type AssistantConfig, loadAssistantConfig, type ModelConfig } from "./config.js";
import { DemoModel } from "./demo-model.js";
import type { ChatModel } from "./model.js";
import { OpenAIModel } from "./openai-model.js";
import { ServiceApi } from "./service-api.js";
import { WebhookServer } from "./webhook-server.js";

export function createModel(config: ModelConfig): ChatModel {
  return config.kind === "demo"
    ? new DemoModel(config.wordsPerSecond)
    : new OpenAIModel({ baseUrl: config.baseUrl, apiKey: config.apiKey, model: config.model });
}

export interface RunningAssistant {
  /** The URL to configure as the chat server's `APP_WEBHOOK_URL`. */
  webhookUrl: string;
  assistant: Assistant;
  /** Stops receiving, aborts the replies in progress (failing their streams), then closes. */
  close(): Promise<void>;
}

function build(config: AssistantConfig, logger: Logger, serviceUrl: string): Assistant {
  return new Assistant({
    service: new ServiceApi(serviceUrl, config.serviceApiKey),
    model: createModel(config.model),
    logger,
    historyLimit: config.historyLimit,
    systemPrompt: config.systemPrompt,
    flushMs: config.flushMs,
  });
}

export async function startAssistant(
  config: AssistantConfig,
  logger: Logger,
): Promise<RunningAssistant> {
  const assistant = build(config, logger, config.serviceUrl);
  const server = new WebhookServer({ secret: config.webhookSecret, logger, assistant });
  const webhookUrl = await server.listen(config.port, config.host);
  return {
    webhookUrl,
    assistant,
    async close() {
      const closing = server.close();
      await assistant.close();
      await closing;
    },
  };
}

/** The built-in assistant of `npm start` in development, before the server listens. */
export interface DevAssistant {
  /** For the server's `appWebhook` component: where to deliver events, and the secret. */
  webhook: { url: string; secret: string };
  /** The service key the server must accept (the configured one, or one generated now). */
  serviceApiKey: string;
  /** Starts answering, once the server listens at `serverUrl`. */
  connect(serverUrl: string): void;
  close(): Promise<void>;
}

/**
 * Development only (the caller checks NODE_ENV): listens on a free loopback port with a freshly
 * generated webhook secret, and, if `SERVICE_API_KEY` is not set, a generated service key. The
 * assistant's own variables (model, history, prompt) are read from `env` as usual. Returns
 * undefined when `APP_WEBHOOK_URL` is set: the app's own backend receives the events then.
 */
export async function startDevAssistant(
  env: Record<string, string | undefined>,
  serviceApiKey: string | undefined,
  logger: Logger,
): Promise<DevAssistant | undefined> {
  if (env.APP_WEBHOOK_URL?.trim()) return undefined;
  const secret = `whsec_${randomBytes(32).toString("base64")}`;
  const key = serviceApiKey ?? randomBytes(32).toString("hex");
  const config = loadAssistantConfig({
    ...env,
    SERVICE_API_KEY: key,
    APP_WEBHOOK_SECRET: secret,
    ASSISTANT_HOST: "127.0.0.1",
    ASSISTANT_PORT: "0",
  });
  const server = new WebhookServer({ secret, logger });
  const url = await server.listen(0, "127.0.0.1");
  let assistant: Assistant | undefined;
  return {
    webhook: { url, secret },
    serviceApiKey: key,
    connect(serverUrl) {
      assistant = build(config, logger, serverUrl);
      server.setAssistant(assistant);
      logger.info(
        {
          webhookUrl: url,
          model: config.model.kind === "demo" ? "demo" : config.model.model,
        },
        config.model.kind === "demo"
          ? "development assistant: replies with the demo model (set OPENAI_BASE_URL for a real one)"
          : "development assistant: replies with the configured model",
      );
    },
    async close() {
      const closing = server.close();
      await assistant?.close();
      await closing;
    },
  };
}

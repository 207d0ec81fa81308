/**
 * The assistant's configuration: the one place of the worker that reads the environment
 * (docs/assistant.md lists every variable). A bad value stops it with a message naming the
 * variable. Kept apart from the chat server's config because the worker is a separate app: copy
 * this folder into your own backend and it comes along.
 */
import { Webhook } from "standardwebhooks";

/** Which model writes the replies. */
export type ModelConfig =
  | {
      kind: "openai";
      /** Base URL of an OpenAI-compatible API (`…/v1`): OpenAI, Ollama, vLLM, a gateway. */
      baseUrl: string;
      /** Sent as `Authorization: Bearer`; local servers (Ollama, vLLM) ignore it. */
      apiKey: string | undefined;
      model: string;
    }
  | {
      /** No model configured: the built-in demo model (demo-model.ts). */
      kind: "demo";
      /** Words per second of the demo model's reply. */
      wordsPerSecond: number;
    };

export interface AssistantConfig {
  /** Where the webhook receiver listens (`POST /webhooks`). */
  host: string;
  port: number;
  /** Base URL of the chat server (its service API is under `/service/v1`). */
  serviceUrl: string;
  /** The chat server's `SERVICE_API_KEY`. */
  serviceApiKey: string;
  /** The chat server's `APP_WEBHOOK_SECRET` (`whsec_…`): deliveries are verified with it. */
  webhookSecret: string;
  model: ModelConfig;
  /** Messages of the chat sent to the model with each request (the latest, up to and with the user's). */
  historyLimit: number;
  /** The system prompt sent first. */
  systemPrompt: string;
  /** Milliseconds the worker gathers tokens before sending them as one chunk. */
  flushMs: number;
}

/** A configuration that cannot work; the message names the variable. */
export class AssistantConfigError extends Error {
  override name = "AssistantConfigError";
}

export const DEFAULTS = {
  host: "127.0.0.1",
  port: 3100,
  serviceUrl: "http://127.0.0.1:3000",
  openaiBaseUrl: "https://api.openai.com/v1",
  historyLimit: 20,
  systemPrompt: "You are a helpful assistant. Answer concisely.",
  flushMs: 50,
  demoWordsPerSecond: 25,
} as const;

type Env = Record<string, string | undefined>;

/** The value of `name`, or undefined when unset or blank. */
function read(env: Env, name: string): string | undefined {
  const value = env[name]?.trim();
  return value ? value : undefined;
}

function integer(env: Env, name: string, fallback: number, min: number, max: number): number {
  const raw = read(env, name);
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (!/^\d+$/.test(raw) || n < min || n > max) {
    throw new AssistantConfigError(
      `${name} must be an integer from ${min} to ${max} (got "${raw}")`,
    );
  }
  return n;
}

function httpUrl(env: Env, name: string, fallback?: string): string {
  const raw = read(env, name) ?? fallback;
  if (raw === undefined) throw new AssistantConfigError(`${name} is required`);
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new AssistantConfigError(`${name} must be an http(s) URL (got "${raw}")`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new AssistantConfigError(`${name} must be an http(s) URL (got "${raw}")`);
  }
  return raw.replace(/\/+$/, "");
}

/**
 * Reads the assistant's variables. Without `OPENAI_BASE_URL` and `OPENAI_API_KEY` the demo
 * model replies; with either, `OPENAI_MODEL` is required.
 */
export function loadAssistantConfig(env: Env = process.env): AssistantConfig {
  const serviceApiKey = read(env, "SERVICE_API_KEY");
  if (!serviceApiKey) {
    throw new AssistantConfigError(
      "SERVICE_API_KEY is required: the chat server's service key (the same value as the server's)",
    );
  }
  const webhookSecret = read(env, "APP_WEBHOOK_SECRET");
  if (!webhookSecret) {
    throw new AssistantConfigError(
      "APP_WEBHOOK_SECRET is required: the chat server's webhook secret (whsec_…, the same value as the server's)",
    );
  }
  try {
    new Webhook(webhookSecret);
  } catch {
    throw new AssistantConfigError("APP_WEBHOOK_SECRET must be whsec_ followed by base64");
  }

  const baseUrl = read(env, "OPENAI_BASE_URL");
  const apiKey = read(env, "OPENAI_API_KEY");
  let model: ModelConfig;
  if (baseUrl || apiKey) {
    const name = read(env, "OPENAI_MODEL");
    if (!name) {
      throw new AssistantConfigError(
        "OPENAI_MODEL is required with OPENAI_BASE_URL or OPENAI_API_KEY (e.g. gpt-4o-mini, llama3.2)",
      );
    }
    model = {
      kind: "openai",
      baseUrl: httpUrl(env, "OPENAI_BASE_URL", DEFAULTS.openaiBaseUrl),
      apiKey,
      model: name,
    };
  } else {
    model = {
      kind: "demo",
      wordsPerSecond: integer(
        env,
        "ASSISTANT_DEMO_WORDS_PER_SECOND",
        DEFAULTS.demoWordsPerSecond,
        1,
        1000,
      ),
    };
  }

  return {
    host: read(env, "ASSISTANT_HOST") ?? DEFAULTS.host,
    port: integer(env, "ASSISTANT_PORT", DEFAULTS.port, 0, 65535),
    serviceUrl: httpUrl(env, "CHAT_SERVICE_URL", DEFAULTS.serviceUrl),
    serviceApiKey,
    webhookSecret,
    model,
    historyLimit: integer(env, "ASSISTANT_HISTORY_LIMIT", DEFAULTS.historyLimit, 1, 200),
    systemPrompt: env.ASSISTANT_SYSTEM_PROMPT?.trim() || DEFAULTS.systemPrompt,
    flushMs: integer(env, "ASSISTANT_FLUSH_MS", DEFAULTS.flushMs, 0, 5000),
  };
}

/**
 * Helpers for the assistant's tests:
 * - a fake OpenAI-compatible server (node:http) that streams real `text/event-stream`
 *   `chat.completion.chunk` events, behaving per model name (a normal reply with a usage chunk,
 *   an error event or a cut connection mid-reply, a slow reply to stop), and records each request
 *   and whether the client aborted it;
 * - the worker started in-process against a real chat server;
 * - webhook deliveries signed with the `standardwebhooks` package, exactly as the server signs.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { Webhook } from "standardwebhooks";
import type { Logger } from "../../assistant/assistant.js";
import { type AssistantConfig, loadAssistantConfig } from "../../assistant/config.js";
import { type RunningAssistant, startAssistant } from "../../assistant/index.js";
import type { ChatMessage } from "../../protocol/index.js";
import type { ClientSocket, TestServer } from "../helpers/server.js";
import { ok } from "../realtime/support.js";

/** How the fake model answers a request for one model name. */
export interface FakeBehaviour {
  /** The reply's pieces, one SSE chunk each. */
  pieces: string[];
  /** Milliseconds between chunks. */
  delayMs?: number;
  /** The usage chunk at the end (null: none, as a provider without include_usage). */
  usage?: { prompt_tokens: number; completion_tokens: number; total_tokens: number } | null;
  /**
   * After this many pieces: send an SSE error event (`error`), cut the connection (`cut`), or end
   * the response cleanly with no finish reason and no `[DONE]` (`end`).
   */
  failAfter?: { pieces: number; how: "error" | "cut" | "end" };
}

export interface FakeRequest {
  model: string;
  body: {
    model: string;
    messages: { role: string; content: string }[];
    stream?: boolean;
    stream_options?: { include_usage?: boolean };
  };
  /** Pieces written before the request ended. */
  sent: number;
  /** The client closed the connection before the reply was complete. */
  aborted: boolean;
  /** The reply was written to its end (finish reason, usage, [DONE]). */
  completed: boolean;
}

export interface FakeOpenAI {
  /** Base URL as OPENAI_BASE_URL (…/v1). */
  baseUrl: string;
  requests: FakeRequest[];
  define(model: string, behaviour: FakeBehaviour): void;
  close(): Promise<void>;
}

export async function startFakeOpenAI(): Promise<FakeOpenAI> {
  const behaviours = new Map<string, FakeBehaviour>();
  const requests: FakeRequest[] = [];
  const server: Server = createServer(async (req, res) => {
    if (req.method !== "POST" || req.url !== "/v1/chat/completions") {
      res.writeHead(404).end();
      return;
    }
    let text = "";
    for await (const chunk of req) text += chunk;
    const body = JSON.parse(text) as FakeRequest["body"];
    const behaviour = behaviours.get(body.model);
    if (!behaviour) {
      res.writeHead(404, { "content-type": "application/json" });
      res.end(JSON.stringify({ error: { message: `model ${body.model} not found` } }));
      return;
    }
    const record: FakeRequest = {
      model: body.model,
      body,
      sent: 0,
      aborted: false,
      completed: false,
    };
    requests.push(record);
    res.on("close", () => {
      if (!record.completed) record.aborted = true;
    });
    res.writeHead(200, {
      "content-type": "text/event-stream",
      "cache-control": "no-cache",
      connection: "keep-alive",
    });
    const id = `chatcmpl-${randomBytes(6).toString("hex")}`;
    const created = Math.floor(Date.now() / 1000);
    const event = (choices: unknown[], extra: Record<string, unknown> = {}) =>
      `data: ${JSON.stringify({ id, object: "chat.completion.chunk", created, model: body.model, choices, ...extra })}\n\n`;
    const write = (s: string) => !res.destroyed && res.write(s);

    write(event([{ index: 0, delta: { role: "assistant", content: "" }, finish_reason: null }]));
    for (const [i, piece] of behaviour.pieces.entries()) {
      if (res.destroyed) return;
      if (behaviour.failAfter && i === behaviour.failAfter.pieces) {
        if (behaviour.failAfter.how === "cut") {
          res.socket?.destroy();
        } else if (behaviour.failAfter.how === "end") {
          res.end();
        } else {
          write(
            `data: ${JSON.stringify({ error: { message: "The model is overloaded", type: "server_error" } })}\n\n`,
          );
          res.end();
        }
        return;
      }
      if (behaviour.delayMs) await new Promise((r) => setTimeout(r, behaviour.delayMs));
      if (res.destroyed) return;
      write(event([{ index: 0, delta: { content: piece }, finish_reason: null }]));
      record.sent++;
    }
    write(event([{ index: 0, delta: {}, finish_reason: "stop" }]));
    if (behaviour.usage !== null) {
      const usage = behaviour.usage ?? {
        prompt_tokens: 10,
        completion_tokens: behaviour.pieces.length,
        total_tokens: 10 + behaviour.pieces.length,
      };
      write(event([], { usage }));
    }
    write("data: [DONE]\n\n");
    record.completed = true;
    res.end();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    baseUrl: `http://127.0.0.1:${port}/v1`,
    requests,
    define: (model, behaviour) => behaviours.set(model, behaviour),
    async close() {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    },
  };
}

/** A webhook secret as the server's APP_WEBHOOK_SECRET. */
export function newWebhookSecret(): string {
  return `whsec_${randomBytes(32).toString("base64")}`;
}

export const silentLogger: Logger = {
  debug() {},
  info() {},
  warn() {},
  error() {},
};

/** The worker's configuration for tests: port 0, fast chunk flushes. */
export function workerConfig(env: Record<string, string>): AssistantConfig {
  return loadAssistantConfig({ ASSISTANT_PORT: "0", ASSISTANT_FLUSH_MS: "20", ...env });
}

export async function startWorker(config: AssistantConfig): Promise<RunningAssistant> {
  return startAssistant(config, silentLogger);
}

/** A delivery as the server sends it: JSON body, Standard Webhooks headers. */
export function signed(
  secret: string,
  event: unknown,
  options: { id?: string; at?: Date } = {},
): { headers: Record<string, string>; body: string; id: string } {
  const id = options.id ?? `evt_${randomUUID()}`;
  const at = options.at ?? new Date();
  const body = JSON.stringify(event);
  return {
    id,
    body,
    headers: {
      "content-type": "application/json",
      "webhook-id": id,
      "webhook-timestamp": String(Math.floor(at.getTime() / 1000)),
      "webhook-signature": new Webhook(secret).sign(id, at, body),
    },
  };
}

export async function post(
  url: string,
  delivery: { headers: Record<string, string>; body: string },
): Promise<{ status: number; body: unknown }> {
  const res = await fetch(url, {
    method: "POST",
    headers: delivery.headers,
    body: delivery.body,
    signal: AbortSignal.timeout(10_000),
  });
  return { status: res.status, body: await res.json().catch(() => undefined) };
}

export function messageCreated(userId: string, chatId: string, message: ChatMessage) {
  return {
    type: "message.created",
    timestamp: new Date().toISOString(),
    data: { userId, chatId, chat: { title: "Test" }, message },
  };
}

export function stopRequested(userId: string, chatId: string, streamId: string) {
  return {
    type: "stream.stop_requested",
    timestamp: new Date().toISOString(),
    data: { userId, chatId, streamId, requestedAt: new Date().toISOString() },
  };
}

export function chatDeleted(userId: string, chatId: string) {
  return { type: "chat.deleted", timestamp: new Date().toISOString(), data: { userId, chatId } };
}

/** A user with a chat open on a real socket. */
export async function userWithChat(
  server: TestServer,
  userId: string,
): Promise<{ socket: ClientSocket; chatId: string }> {
  const socket = await server.connectAs(userId);
  const { chat } = await ok(socket, "chat:create", { title: "Assistant test" });
  await ok(socket, "chat:open", { chatId: chat.id });
  return { socket, chatId: chat.id };
}

/** Sends a user message over the socket and returns it as stored (what the webhook carries). */
export async function say(socket: ClientSocket, chatId: string, content: string) {
  const { message } = await ok(socket, "message:send", {
    chatId,
    clientId: randomUUID(),
    content,
  });
  return message;
}

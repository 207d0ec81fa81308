/**
 * The worker's reaction to `409 STREAM_STOPPED` (the user stopped the reply on the server before
 * the stop webhook reached the worker). Today's server cannot answer it yet, so a tiny local
 * stand-in of the service API gives that one answer, to a chunk or to the finish; everything else
 * it answers as the real server does. The model is the fake OpenAI-compatible SSE server.
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import type { RunningAssistant } from "../../assistant/index.js";
import { eventually } from "../helpers/server.js";
import {
  type FakeOpenAI,
  messageCreated,
  newWebhookSecret,
  post,
  signed,
  startFakeOpenAI,
  startWorker,
  workerConfig,
} from "./support.js";

const SECRET = newWebhookSecret();
const KEY = "k".repeat(40);
let fake: FakeOpenAI;
const closers: (() => Promise<void>)[] = [];

beforeAll(async () => {
  fake = await startFakeOpenAI();
  fake.define("slow", { pieces: Array.from({ length: 300 }, (_, i) => `w${i} `), delayMs: 20 });
  fake.define("short", { pieces: ["All ", "done."], usage: null });
});
afterAll(async () => {
  for (const close of closers.reverse()) await close();
  await fake?.close();
});

interface Call {
  method: string;
  path: string;
  body: unknown;
}

/** The service API's answers, with `409 STREAM_STOPPED` for the chunk `stopAtChunk` or the finish. */
async function standIn(stop: { chunk: number } | "finish") {
  const calls: Call[] = [];
  const server: Server = createServer(async (req, res) => {
    let text = "";
    for await (const c of req) text += c;
    const path = new URL(req.url ?? "/", "http://x").pathname;
    const body = text ? JSON.parse(text) : undefined;
    calls.push({ method: req.method ?? "", path, body });
    const json = (status: number, value: unknown) => {
      res.writeHead(status, { "content-type": "application/json" });
      res.end(JSON.stringify(value));
    };
    const stopped = () =>
      json(409, { error: { code: "STREAM_STOPPED", message: "The reply was stopped" } });
    if (req.headers.authorization !== `Bearer ${KEY}`) return json(401, {});
    if (req.method === "GET" && path.endsWith("/messages"))
      return json(200, { messages: [], hasMore: false });
    if (path.endsWith("/streams")) {
      return json(201, {
        stream: { streamId: body.streamId, chatId: "c", status: "active", nextIndex: 0 },
        created: true,
      });
    }
    if (path.endsWith("/chunks")) {
      if (stop !== "finish" && body.index >= stop.chunk) return stopped();
      return json(200, { streamId: "s", nextIndex: body.index + 1, applied: 1 });
    }
    if (path.endsWith("/finish")) return stop === "finish" ? stopped() : json(201, {});
    if (path.endsWith("/fail")) return json(200, {});
    if (path.endsWith("/token-usage")) return json(200, { tokenUsage: body.tokens });
    json(404, { error: { code: "NOT_FOUND", message: "No such route" } });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  closers.push(() => new Promise((r) => server.close(() => r())));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, calls };
}

async function workerFor(serviceUrl: string, model: string): Promise<RunningAssistant> {
  const w = await startWorker(
    workerConfig({
      CHAT_SERVICE_URL: serviceUrl,
      SERVICE_API_KEY: KEY,
      APP_WEBHOOK_SECRET: SECRET,
      OPENAI_BASE_URL: fake.baseUrl,
      OPENAI_MODEL: model,
    }),
  );
  closers.push(() => w.close());
  return w;
}

const message = (id: string) => ({
  id,
  chatId: "00000000-0000-4000-8000-000000000001",
  seq: 1,
  clientId: `c-${id}`,
  role: "user" as const,
  content: "Write a long story",
  createdAt: new Date().toISOString(),
});

describe("409 STREAM_STOPPED", () => {
  test("to a chunk: the model call is aborted, and nothing more is sent (no finish, no fail)", async () => {
    const service = await standIn({ chunk: 2 });
    const w = await workerFor(service.url, "slow");
    const m = message("m1");
    await post(w.webhookUrl, signed(SECRET, messageCreated("user_s", m.chatId, m)));
    await w.assistant.idle();

    const request = fake.requests.find((r) => r.model === "slow");
    await eventually(() => expect(request?.aborted).toBe(true));
    expect(request?.sent).toBeLessThan(300);
    const chunks = service.calls.filter((c) => c.path.endsWith("/chunks"));
    // Consecutive indexes up to the refused one, then nothing.
    expect(chunks.map((c) => (c.body as { index: number }).index)).toEqual([0, 1, 2]);
    expect(service.calls.some((c) => c.path.endsWith("/finish"))).toBe(false);
    expect(service.calls.some((c) => c.path.endsWith("/fail"))).toBe(false);
    // The tokens spent so far are recorded, once.
    const usage = service.calls.filter((c) => c.path.endsWith("/token-usage"));
    expect(usage).toHaveLength(1);
    expect((usage[0]?.body as { tokens?: number } | undefined)?.tokens).toBeGreaterThan(0);
  });

  test("to the finish: the reply is left to the server (no fail), usage still recorded", async () => {
    const service = await standIn("finish");
    const w = await workerFor(service.url, "short");
    const m = message("m2");
    await post(w.webhookUrl, signed(SECRET, messageCreated("user_s", m.chatId, m)));
    await w.assistant.idle();

    const calls = service.calls.map((c) => `${c.method} ${c.path.split("/").at(-1)}`);
    // One or more chunks (the model's text, batched), then the refused finish, then the usage.
    expect(calls.filter((c, i) => c !== calls[i - 1])).toEqual([
      "GET messages",
      "POST streams",
      "POST chunks",
      "POST finish",
      "POST token-usage",
    ]);
  });
});

/**
 * The whole loop as separate processes: a production-mode server delivering its webhooks to
 * `npm run assistant` (assistant/main.ts), which streams a fake OpenAI-compatible model's reply
 * back through the service API. A device sends; the reply streams, stops from another device,
 * fails when the model errors mid-reply; the usage is recorded. Only documented interfaces.
 */
import { randomBytes } from "node:crypto";
import type postgres from "postgres";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import type { ChatMessage } from "../../protocol/index.js";
import { type FakeOpenAI, startFakeOpenAI } from "../assistant/support.js";
import { createTestDatabase, type TestDatabase } from "../helpers/db.js";
import { freePort } from "../helpers/redis-process.js";
import { type ClientSocket, eventually } from "../helpers/server.js";
import { newSecret } from "../outbox/support.js";
import { ok, openSql, userId } from "../realtime/support.js";
import { http, newServiceKey } from "../service/support.js";
import {
  device,
  type NodeProcess,
  placeByOffset,
  record,
  startAssistantProcess,
  startNode,
} from "./nodes.js";

const KEY = newServiceKey();
const MODEL = "fake-model";
let tdb: TestDatabase;
let fake: FakeOpenAI;
let node: NodeProcess;
let assistant: Awaited<ReturnType<typeof startAssistantProcess>>;
let assistantUrl: string;
let sql: postgres.Sql;
const sockets: ClientSocket[] = [];

beforeAll(async () => {
  tdb = await createTestDatabase();
  fake = await startFakeOpenAI();
  const secret = newSecret();
  const assistantPort = await freePort();
  assistantUrl = `http://127.0.0.1:${assistantPort}`;
  node = await startNode(tdb.url, {
    SERVICE_API_KEY: KEY,
    APP_WEBHOOK_URL: `${assistantUrl}/webhooks`,
    APP_WEBHOOK_SECRET: secret,
  });
  assistant = await startAssistantProcess({
    SERVICE_API_KEY: KEY,
    APP_WEBHOOK_SECRET: secret,
    CHAT_SERVICE_URL: node.url,
    ASSISTANT_PORT: String(assistantPort),
    OPENAI_BASE_URL: fake.baseUrl,
    OPENAI_MODEL: MODEL,
  });
  sql = openSql(tdb.url);
}, 120_000);

afterAll(async () => {
  for (const s of sockets) s.disconnect();
  await assistant?.stop();
  await node?.stop();
  await sql?.end({ timeout: 5 });
  await fake?.close();
  await tdb?.drop();
}, 60_000);

async function on(uid: string) {
  const s = await device(node.url, uid);
  sockets.push(s);
  return s;
}

async function stats(s: ClientSocket) {
  return (await ok(s, "user:stats", {})).stats.tokenUsage;
}

describe("npm run assistant behind a production server", () => {
  test("a user's message gets the model's reply streamed, stored once, with the history and the usage", async () => {
    fake.define(MODEL, {
      pieces: ["Pack ", "light ", "layers."],
      delayMs: 20,
      usage: { prompt_tokens: 30, completion_tokens: 12, total_tokens: 42 },
    });
    const uid = userId("bba_reply");
    const d = await on(uid);
    const r = record(d);
    const { chat } = await ok(d, "chat:create", { title: "Lisbon" });
    await ok(d, "chat:open", { chatId: chat.id });
    const before = await stats(d);
    const sent = await ok(d, "message:send", {
      chatId: chat.id,
      clientId: randomBytes(8).toString("hex"),
      content: "What should I pack?",
    });
    const streamId = `reply-${sent.message.id}`;
    const reply = await eventually(() => {
      const created = r
        .of<{ message: ChatMessage }>("message:created")
        .find((e) => e.message.clientId === streamId);
      expect(created).toBeDefined();
      return created?.message as ChatMessage;
    }, 20_000);
    expect(reply).toMatchObject({ role: "assistant", content: "Pack light layers." });
    expect(r.of("message:streaming", streamId)).toHaveLength(1);
    expect(placeByOffset("", r.of("message:delta", streamId) as never)).toBe("Pack light layers.");
    const request = fake.requests.at(-1);
    expect(request?.body.stream).toBe(true);
    expect(request?.body.messages.at(-1)).toEqual({ role: "user", content: "What should I pack?" });
    expect(request?.body.messages[0]?.role).toBe("system");
    await eventually(async () => expect(await stats(d)).toBe(before + 42), 10_000);
    const rows = await sql`select 1 from chat_memory where client_id = ${streamId}`;
    expect(rows).toHaveLength(1);
  });

  test("stopped from another device: the model call is aborted, the partial reply stored once, usage recorded", async () => {
    fake.define(MODEL, {
      pieces: Array.from({ length: 400 }, (_, i) => `word${i} `),
      delayMs: 25,
    });
    const uid = userId("bba_stop");
    const d1 = await on(uid);
    const d2 = await on(uid);
    const r1 = record(d1);
    const { chat } = await ok(d1, "chat:create", { title: "Stop" });
    await ok(d1, "chat:open", { chatId: chat.id });
    await ok(d2, "chat:open", { chatId: chat.id });
    const before = await stats(d1);
    const requestsBefore = fake.requests.length;
    const sent = await ok(d1, "message:send", {
      chatId: chat.id,
      clientId: randomBytes(8).toString("hex"),
      content: "Tell me a long story",
    });
    const streamId = `reply-${sent.message.id}`;
    await eventually(() => {
      expect(placeByOffset("", r1.of("message:delta", streamId) as never).length).toBeGreaterThan(
        40,
      );
    }, 20_000);
    const stopped = await ok(d2, "message:stop", { chatId: chat.id, streamId });
    expect(stopped.status).toBe("stopped");
    expect(stopped.message?.stopped).toBe(true);
    const request = fake.requests[requestsBefore];
    await eventually(() => expect(request?.aborted).toBe(true), 10_000);
    expect(request?.completed).toBe(false);
    // Usage (an estimate: the provider reported none before the abort) is recorded.
    await eventually(async () => expect(await stats(d1)).toBeGreaterThan(before), 10_000);
    // The worker sent nothing that changed it: no fail, the stopped reply is the only one.
    expect(r1.of("message:failed", streamId)).toEqual([]);
    const rows = await sql<{ content: string }[]>`
      select message->>'content' as content from chat_memory where client_id = ${streamId}`;
    expect(rows).toEqual([{ content: stopped.message?.content }]);
    const view = await http<{ stream: { status: string } }>(
      `${node.url}/service/v1/streams/${streamId}`,
      { headers: { authorization: `Bearer ${KEY}` } },
    );
    expect(view.body.stream.status).toBe("stopped");
  });

  test("a model that errors mid-reply: the stream fails (message:failed), nothing is stored", async () => {
    fake.define(MODEL, {
      pieces: ["Half ", "an ", "answer"],
      delayMs: 20,
      failAfter: { pieces: 2, how: "error" },
    });
    const uid = userId("bba_error");
    const d = await on(uid);
    const r = record(d);
    const { chat } = await ok(d, "chat:create", { title: "Error" });
    await ok(d, "chat:open", { chatId: chat.id });
    const sent = await ok(d, "message:send", {
      chatId: chat.id,
      clientId: randomBytes(8).toString("hex"),
      content: "Try",
    });
    const streamId = `reply-${sent.message.id}`;
    const failed = await eventually(() => {
      const f = r.of("message:failed", streamId);
      expect(f).toHaveLength(1);
      return f[0];
    }, 20_000);
    expect(failed).toEqual({
      streamId,
      chatId: chat.id,
      reason: "FAILED",
      message: "The model failed while writing this reply",
    });
    expect(await sql`select 1 from chat_memory where client_id = ${streamId}`).toEqual([]);
    expect(
      (await ok(d, "chat:list", {})).chats.find((c) => c.id === chat.id)?.generating,
    ).toBeNull();
  });

  test("the worker refuses an unsigned or wrongly signed delivery with 401", async () => {
    const body = JSON.stringify({
      type: "message.created",
      timestamp: new Date().toISOString(),
      data: {},
    });
    const unsigned = await http(`${assistantUrl}/webhooks`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body,
    });
    expect(unsigned.status).toBe(401);
    const wrong = await http(`${assistantUrl}/webhooks`, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        "webhook-id": "evt_x",
        "webhook-timestamp": String(Math.floor(Date.now() / 1000)),
        "webhook-signature": `v1,${randomBytes(32).toString("base64")}`,
      },
      body,
    });
    expect(wrong.status).toBe(401);
  });
});

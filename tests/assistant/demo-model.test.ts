/**
 * The built-in demo model (no model configured): deterministic, clearly labelled, derived from the
 * user's message, word by word at a readable pace, and abortable; and end to end through a real
 * server, the way `npm start` uses it.
 */
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { Assistant } from "../../assistant/assistant.js";
import { DEFAULTS } from "../../assistant/config.js";
import { DEMO_LABEL, DemoModel, demoReplyText } from "../../assistant/demo-model.js";
import type { RunningAssistant } from "../../assistant/index.js";
import type { ModelEvent, ModelMessage } from "../../assistant/model.js";
import type { ChatMessage } from "../../protocol/index.js";
import { eventually, recordEvents, startTestServer, type TestServer } from "../helpers/server.js";
import { userId } from "../realtime/support.js";
import { newServiceKey } from "../service/support.js";
import {
  messageCreated,
  newWebhookSecret,
  post,
  say,
  signed,
  startWorker,
  userWithChat,
  workerConfig,
} from "./support.js";

const conversation: ModelMessage[] = [
  { role: "system", content: "You are helpful." },
  { role: "user", content: "What is the capital of Portugal?" },
];

async function collect(events: AsyncIterable<ModelEvent>): Promise<string[]> {
  const texts: string[] = [];
  for await (const e of events) if (e.type === "text") texts.push(e.text);
  return texts;
}

describe("the demo model", () => {
  test("is deterministic, labelled and derived from the user's message", async () => {
    const model = new DemoModel(1000);
    const a = await collect(model.reply(conversation, new AbortController().signal));
    const b = await collect(model.reply(conversation, new AbortController().signal));
    expect(a).toEqual(b);
    const text = a.join("");
    expect(text).toBe(demoReplyText(conversation));
    expect(text.startsWith(DEMO_LABEL)).toBe(true);
    expect(DEMO_LABEL).toMatch(/^Demo model — no LLM configured:/);
    expect(text).toContain("“What is the capital of Portugal?” (6 words, 32 characters)");
    // Another message, another reply.
    const other = demoReplyText([{ role: "user", content: "Hello" }]);
    expect(other).toContain("“Hello” (1 word, 5 characters)");
    expect(other).not.toBe(text);
  });

  test("streams word by word, long enough at its default pace to press stop", async () => {
    const texts = await collect(
      new DemoModel(1000).reply(conversation, new AbortController().signal),
    );
    expect(texts.length).toBe(demoReplyText(conversation).split(" ").length);
    expect(texts.slice(1).every((t) => /^ \S+$/.test(t))).toBe(true);
    // At the default 25 words a second the reply takes this many seconds.
    expect(texts.length / DEFAULTS.demoWordsPerSecond).toBeGreaterThanOrEqual(3);
  });

  test("ends at once when its signal is aborted", async () => {
    const controller = new AbortController();
    const texts: string[] = [];
    const reason = new Error("stopped by the test");
    let caught: unknown;
    try {
      // 2 words a second: without the abort this would take about a minute.
      for await (const e of new DemoModel(2).reply(conversation, controller.signal)) {
        if (e.type === "text") texts.push(e.text);
        if (texts.length === 2) setTimeout(() => controller.abort(reason), 10);
      }
    } catch (e) {
      caught = e;
    }
    expect(caught).toBe(reason);
    expect(texts).toHaveLength(2);
  });
});

describe("the demo model through the real server", () => {
  const KEY = newServiceKey();
  const SECRET = newWebhookSecret();
  let server: TestServer;
  let worker: RunningAssistant;

  beforeAll(async () => {
    server = await startTestServer({ serviceApiKey: KEY });
    // No OPENAI_* variables: the demo model, here at a fast pace.
    worker = await startWorker(
      workerConfig({
        CHAT_SERVICE_URL: server.url,
        SERVICE_API_KEY: KEY,
        APP_WEBHOOK_SECRET: SECRET,
        ASSISTANT_DEMO_WORDS_PER_SECOND: "400",
      }),
    );
  });
  afterAll(async () => {
    await worker?.close();
    await server?.close();
  });

  test("replies to a user's message with the labelled demo text", async () => {
    const uid = userId("demo");
    const { socket, chatId } = await userWithChat(server, uid);
    const events = recordEvents(socket);
    const message = await say(socket, chatId, "Hello there");
    await post(worker.webhookUrl, signed(SECRET, messageCreated(uid, chatId, message)));
    const streamId = Assistant.streamIdFor(message.id);
    const reply = await eventually(() => {
      const m = events
        .of<{ message: ChatMessage }>("message:created")
        .find((e) => e.message.clientId === streamId);
      if (!m) throw new Error("no reply yet");
      return m.message;
    }, 15_000);
    expect(reply.content).toBe(
      demoReplyText([
        { role: "system", content: DEFAULTS.systemPrompt },
        { role: "user", content: "Hello there" },
      ]),
    );
    expect(events.of("message:delta").length).toBeGreaterThan(1);
  });
});

/**
 * The reference assistant end to end, driven the way the server drives it: signed webhook
 * deliveries posted to the worker, a REAL chat server (service API, streams, Postgres, sockets)
 * behind it, and a fake OpenAI-compatible model server streaming real server-sent events.
 */
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { Assistant } from "../../assistant/assistant.js";
import type { RunningAssistant } from "../../assistant/index.js";
import { RecentIds, WebhookServer } from "../../assistant/webhook-server.js";
import type {
  ChatMessage,
  MessageDelta,
  MessageStreamFailed,
  MessageStreaming,
  UserStats,
} from "../../protocol/index.js";
import { eventually, recordEvents, startTestServer, type TestServer } from "../helpers/server.js";
import { ok, userId } from "../realtime/support.js";
import { newServiceKey, serviceClient } from "../service/support.js";
import {
  chatDeleted,
  type FakeOpenAI,
  messageCreated,
  newWebhookSecret,
  post,
  say,
  signed,
  silentLogger,
  startFakeOpenAI,
  startWorker,
  stopRequested,
  userWithChat,
  workerConfig,
} from "./support.js";

const KEY = newServiceKey();
const SECRET = newWebhookSecret();
let server: TestServer;
let fake: FakeOpenAI;
let api: ReturnType<typeof serviceClient>;
const workers: RunningAssistant[] = [];

beforeAll(async () => {
  server = await startTestServer({ serviceApiKey: KEY });
  fake = await startFakeOpenAI();
  api = serviceClient(server.url, KEY);
});
afterAll(async () => {
  for (const w of workers) await w.close();
  await fake?.close();
  await server?.close();
});

/** A worker using the fake model `model`, against the real server. */
async function worker(model: string, env: Record<string, string> = {}) {
  const w = await startWorker(
    workerConfig({
      CHAT_SERVICE_URL: server.url,
      SERVICE_API_KEY: KEY,
      APP_WEBHOOK_SECRET: SECRET,
      OPENAI_BASE_URL: fake.baseUrl,
      OPENAI_API_KEY: "sk-test",
      OPENAI_MODEL: model,
      ...env,
    }),
  );
  workers.push(w);
  return w;
}

const requestsFor = (model: string) => fake.requests.filter((r) => r.model === model);
const stored = async (uid: string, chatId: string) =>
  (await api.get<{ messages: ChatMessage[] }>(`/users/${uid}/chats/${chatId}/messages`)).body
    .messages;
const stats = async (uid: string) =>
  (await api.get<{ stats: UserStats }>(`/users/${uid}/stats`)).body.stats;

describe("a user's message gets a streamed reply", () => {
  test("streams the model's text live, stores it once, records the reported usage", async () => {
    const pieces = ["Pack ", "light ", "layers ", "and ", "a ", "rain ", "jacket", "."];
    fake.define("m-ok", {
      pieces,
      delayMs: 5,
      usage: { prompt_tokens: 30, completion_tokens: 12, total_tokens: 42 },
    });
    const w = await worker("m-ok", { ASSISTANT_SYSTEM_PROMPT: "You pack bags." });
    const uid = userId("reply");
    const { socket, chatId } = await userWithChat(server, uid);
    const events = recordEvents(socket);
    const message = await say(socket, chatId, "What should I pack for Lisbon?");

    const res = await post(w.webhookUrl, signed(SECRET, messageCreated(uid, chatId, message)));
    expect(res.status).toBe(202);

    const streamId = Assistant.streamIdFor(message.id);
    const created = await eventually(() => {
      const m = events
        .of<{ message: ChatMessage }>("message:created")
        .find((e) => e.message.clientId === streamId);
      if (!m) throw new Error("no reply yet");
      return m.message;
    }, 15_000);
    const text = pieces.join("");
    expect(created.role).toBe("assistant");
    expect(created.content).toBe(text);

    // Live: a placeholder, then deltas with consecutive indexes that add up to the text.
    expect(events.of<MessageStreaming>("message:streaming").map((e) => e.streamId)).toEqual([
      streamId,
    ]);
    const deltas = events.of<MessageDelta>("message:delta").filter((d) => d.streamId === streamId);
    expect(deltas.map((d) => d.index)).toEqual(deltas.map((_, i) => i));
    expect(deltas.map((d) => d.delta).join("")).toBe(text);
    expect(deltas.length).toBeGreaterThanOrEqual(1);
    expect(deltas.length).toBeLessThanOrEqual(pieces.length);

    // Stored once, after the user's message.
    const messages = await stored(uid, chatId);
    expect(messages.map((m) => [m.role, m.content])).toEqual([
      ["user", "What should I pack for Lisbon?"],
      ["assistant", text],
    ]);
    await eventually(async () => expect((await stats(uid)).tokenUsage).toBe(42));

    // The model got the system prompt and the history, streamed with usage requested.
    const [request] = requestsFor("m-ok");
    expect(request?.body.stream).toBe(true);
    expect(request?.body.stream_options?.include_usage).toBe(true);
    expect(request?.body.messages).toEqual([
      { role: "system", content: "You pack bags." },
      { role: "user", content: "What should I pack for Lisbon?" },
    ]);
    expect(request?.completed).toBe(true);
  });

  test("sends the chat's recent history, up to the user's message, and replies in order", async () => {
    fake.define("m-history", { pieces: ["Noted", "."], usage: null });
    const w = await worker("m-history", { ASSISTANT_HISTORY_LIMIT: "3" });
    const uid = userId("history");
    const { socket, chatId } = await userWithChat(server, uid);
    const first = await say(socket, chatId, "one");
    const second = await say(socket, chatId, "two");
    // Both events at once: the worker answers a chat's messages one after the other.
    await post(w.webhookUrl, signed(SECRET, messageCreated(uid, chatId, first)));
    await post(w.webhookUrl, signed(SECRET, messageCreated(uid, chatId, second)));
    await w.assistant.idle();

    // Each reply sees the chat up to and with its own message (by seq): later messages are not
    // its business, they get their own reply.
    const [a, b] = requestsFor("m-history");
    expect(a?.body.messages.slice(1)).toEqual([{ role: "user", content: "one" }]);
    expect(b?.body.messages.slice(1)).toEqual([
      { role: "user", content: "one" },
      { role: "user", content: "two" },
    ]);
    const messages = await stored(uid, chatId);
    expect(messages.map((m) => m.content)).toEqual(["one", "two", "Noted.", "Noted."]);
    expect(messages.slice(2).map((m) => m.clientId)).toEqual([
      Assistant.streamIdFor(first.id),
      Assistant.streamIdFor(second.id),
    ]);

    // A later message sees the replies, limited to the last three messages.
    const third = await say(socket, chatId, "three");
    await post(w.webhookUrl, signed(SECRET, messageCreated(uid, chatId, third)));
    await w.assistant.idle();
    expect(requestsFor("m-history")[2]?.body.messages).toEqual([
      expect.objectContaining({ role: "system" }),
      { role: "assistant", content: "Noted." },
      { role: "assistant", content: "Noted." },
      { role: "user", content: "three" },
    ]);
    // No usage chunk from this provider: an estimate (about 4 characters a token) is recorded.
    expect((await stats(uid)).tokenUsage).toBeGreaterThan(0);
  });
});

describe("when the model fails", () => {
  const what = { error: "an error event", cut: "a cut connection", end: "an early clean end" };
  for (const how of ["error", "cut", "end"] as const) {
    test(`${what[how]} mid-reply fails the stream`, async () => {
      const model = `m-fail-${how}`;
      fake.define(model, {
        pieces: ["Half ", "a ", "reply ", "and ", "then"],
        delayMs: 20,
        failAfter: { pieces: 3, how },
      });
      const w = await worker(model);
      const uid = userId(`fail${how}`);
      const { socket, chatId } = await userWithChat(server, uid);
      const events = recordEvents(socket);
      const message = await say(socket, chatId, "Tell me something");
      await post(w.webhookUrl, signed(SECRET, messageCreated(uid, chatId, message)));

      const streamId = Assistant.streamIdFor(message.id);
      const failed = await eventually(() => {
        const f = events
          .of<MessageStreamFailed>("message:failed")
          .find((e) => e.streamId === streamId);
        if (!f) throw new Error("not failed yet");
        return f;
      }, 15_000);
      expect(failed.reason).toBe("FAILED");
      expect(failed.message).toBe("The model failed while writing this reply");
      await w.assistant.idle();
      // Nothing stored; the stream says failed; the tokens spent are still counted (estimated).
      expect((await stored(uid, chatId)).map((m) => m.role)).toEqual(["user"]);
      const view = await api.get<{ stream: { status: string } }>(`/streams/${streamId}`);
      expect(view.body.stream.status).toBe("failed");
      expect((await stats(uid)).tokenUsage).toBeGreaterThan(0);
      expect(requestsFor(model)).toHaveLength(1);
    });
  }

  test("a model that refuses the request fails the stream without text", async () => {
    // Not defined in the fake: it answers 404 model not found.
    const w = await worker("m-missing");
    const uid = userId("refused");
    const { socket, chatId } = await userWithChat(server, uid);
    const events = recordEvents(socket);
    const message = await say(socket, chatId, "Hello?");
    await post(w.webhookUrl, signed(SECRET, messageCreated(uid, chatId, message)));
    await w.assistant.idle();
    await eventually(() => expect(events.of("message:failed")).toHaveLength(1));
    expect((await stats(uid)).tokenUsage).toBe(0);
  });
});

describe("stopping", () => {
  test("a stream.stop_requested webhook aborts the model call and sends nothing more", async () => {
    fake.define("m-slow", { pieces: Array.from({ length: 200 }, (_, i) => `w${i} `), delayMs: 30 });
    const w = await worker("m-slow");
    const uid = userId("stop");
    const { socket, chatId } = await userWithChat(server, uid);
    const events = recordEvents(socket);
    const message = await say(socket, chatId, "Write a long story");
    await post(w.webhookUrl, signed(SECRET, messageCreated(uid, chatId, message)));
    const streamId = Assistant.streamIdFor(message.id);
    await eventually(() => expect(events.of("message:delta").length).toBeGreaterThan(0), 15_000);

    const res = await post(w.webhookUrl, signed(SECRET, stopRequested(uid, chatId, streamId)));
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ handled: "aborted" });
    await w.assistant.idle();

    const [request] = requestsFor("m-slow");
    await eventually(() => expect(request?.aborted).toBe(true));
    expect(request?.sent).toBeLessThan(200);
    // The worker neither finished nor failed it: the server (which stopped it) owns it now.
    const before = await api.get<{ stream: { status: string; nextIndex: number } }>(
      `/streams/${streamId}`,
    );
    expect(before.body.stream.status).toBe("active");
    const created = events.of<{ message: ChatMessage }>("message:created");
    expect(created.filter((e) => e.message.clientId === streamId)).toHaveLength(0);
    expect(events.of("message:failed")).toHaveLength(0);
    // Usage of what was generated is recorded.
    expect((await stats(uid)).tokenUsage).toBeGreaterThan(0);
    // Nothing more arrives: the next chunk index stays where it was.
    const again = await api.get<{ stream: { nextIndex: number } }>(`/streams/${streamId}`);
    expect(again.body.stream.nextIndex).toBe(before.body.stream.nextIndex);
  });

  test("chat.deleted aborts the chat's reply", async () => {
    fake.define("m-slow-2", {
      pieces: Array.from({ length: 200 }, (_, i) => `w${i} `),
      delayMs: 30,
    });
    const w = await worker("m-slow-2");
    const uid = userId("deleted");
    const { socket, chatId } = await userWithChat(server, uid);
    const events = recordEvents(socket);
    const message = await say(socket, chatId, "Write a long story");
    await post(w.webhookUrl, signed(SECRET, messageCreated(uid, chatId, message)));
    await eventually(() => expect(events.of("message:delta").length).toBeGreaterThan(0), 15_000);

    await ok(socket, "chat:delete", { chatId });
    const res = await post(w.webhookUrl, signed(SECRET, chatDeleted(uid, chatId)));
    expect(res.body).toMatchObject({ handled: "aborted" });
    await w.assistant.idle();
    await eventually(() => expect(requestsFor("m-slow-2")[0]?.aborted).toBe(true));
  });

  test("shutting the worker down fails the replies in progress, so no device waits", async () => {
    fake.define("m-slow-3", {
      pieces: Array.from({ length: 200 }, (_, i) => `w${i} `),
      delayMs: 30,
    });
    const w = await startWorker(
      workerConfig({
        CHAT_SERVICE_URL: server.url,
        SERVICE_API_KEY: KEY,
        APP_WEBHOOK_SECRET: SECRET,
        OPENAI_BASE_URL: fake.baseUrl,
        OPENAI_MODEL: "m-slow-3",
      }),
    );
    const uid = userId("shutdown");
    const { socket, chatId } = await userWithChat(server, uid);
    const events = recordEvents(socket);
    const message = await say(socket, chatId, "Write a long story");
    await post(w.webhookUrl, signed(SECRET, messageCreated(uid, chatId, message)));
    await eventually(() => expect(events.of("message:delta").length).toBeGreaterThan(0), 15_000);

    await w.close();
    const failed = await eventually(() => {
      const [f] = events.of<MessageStreamFailed>("message:failed");
      if (!f) throw new Error("not failed yet");
      return f;
    });
    expect(failed).toMatchObject({
      streamId: Assistant.streamIdFor(message.id),
      reason: "FAILED",
      message: "The assistant shut down before finishing this reply",
    });
    await eventually(() => expect(requestsFor("m-slow-3")[0]?.aborted).toBe(true));
    // Closed: it takes no more deliveries.
    await expect(
      post(w.webhookUrl, signed(SECRET, messageCreated(uid, chatId, message))),
    ).rejects.toThrow();
  });

  test("a stop for a reply this worker is not writing is ignored", async () => {
    const w = await worker("m-ok");
    const res = await post(
      w.webhookUrl,
      signed(SECRET, stopRequested("user_x", crypto.randomUUID(), "reply-unknown")),
    );
    expect(res).toEqual({ status: 200, body: { received: true, handled: "ignored" } });
  });
});

describe("deliveries", () => {
  test("a redelivered event produces no second reply (same worker, and after a restart)", async () => {
    fake.define("m-once", { pieces: ["Only ", "once."], delayMs: 50 });
    const w = await worker("m-once");
    const uid = userId("redeliver");
    const { socket, chatId } = await userWithChat(server, uid);
    const message = await say(socket, chatId, "Hi");
    const delivery = signed(SECRET, messageCreated(uid, chatId, message));
    expect((await post(w.webhookUrl, delivery)).status).toBe(202);
    // The same delivery again (a retry after a lost answer), while the reply is being written.
    const retry = await post(w.webhookUrl, delivery);
    expect(retry).toEqual({ status: 200, body: { received: true, duplicate: true } });
    // Another worker (a restarted one: no memory of ids) gets it while the reply is in progress:
    // the stream exists already (created: false).
    const other = await worker("m-once");
    const during = await post(
      other.webhookUrl,
      signed(SECRET, messageCreated(uid, chatId, message)),
    );
    expect(during.status).toBe(202);
    await other.assistant.idle();
    await w.assistant.idle();
    // …and after it is stored: the history shows the reply.
    const later = await worker("m-once");
    await post(later.webhookUrl, delivery);
    await later.assistant.idle();

    expect(requestsFor("m-once")).toHaveLength(1);
    expect((await stored(uid, chatId)).map((m) => m.content)).toEqual(["Hi", "Only once."]);
  });

  test("remembers a bounded number of webhook ids, the oldest forgotten first", () => {
    const ids = new RecentIds(3);
    expect(["a", "b", "c", "a"].map((id) => ids.seen(id))).toEqual([false, false, false, true]);
    expect(ids.seen("d")).toBe(false);
    expect(ids.size).toBe(3);
    // "a" was the oldest: forgotten.
    expect(ids.seen("a")).toBe(false);
    expect(ids.seen("d")).toBe(true);
  });

  test("answers 503 until the assistant is attached (so the server retries), then acts", async () => {
    fake.define("m-late", { pieces: ["Late ", "but ", "here."] });
    const receiver = new WebhookServer({ secret: SECRET, logger: silentLogger });
    const url = await receiver.listen(0, "127.0.0.1");
    try {
      const uid = userId("late");
      const { socket, chatId } = await userWithChat(server, uid);
      const message = await say(socket, chatId, "Hi");
      const delivery = signed(SECRET, messageCreated(uid, chatId, message));
      expect((await post(url, delivery)).status).toBe(503);

      const w = await worker("m-late");
      receiver.setAssistant(w.assistant);
      // The retry of the same delivery (same webhook-id) is acted on: the 503 did not count it.
      expect((await post(url, delivery)).status).toBe(202);
      await w.assistant.idle();
      expect((await stored(uid, chatId)).map((m) => m.content)).toEqual(["Hi", "Late but here."]);
    } finally {
      await receiver.close();
    }
  });

  test("refuses a bad signature with 401 and does nothing", async () => {
    fake.define("m-never", { pieces: ["never"] });
    const w = await worker("m-never");
    const uid = userId("badsig");
    const { socket, chatId } = await userWithChat(server, uid);
    const message = await say(socket, chatId, "Hi");
    const event = messageCreated(uid, chatId, message);

    const wrongSecret = signed(newWebhookSecret(), event);
    const good = signed(SECRET, event);
    const tampered = { ...good, body: good.body.replace('"Hi"', '"Hi!"') };
    const stale = signed(SECRET, event, { at: new Date(Date.now() - 10 * 60_000) });
    const unsigned = { headers: { "content-type": "application/json" }, body: good.body };
    for (const delivery of [wrongSecret, tampered, stale, unsigned]) {
      const res = await post(w.webhookUrl, delivery);
      expect(res.status).toBe(401);
    }
    expect(requestsFor("m-never")).toHaveLength(0);
    expect(await stored(uid, chatId)).toHaveLength(1);
    // Other paths and methods.
    expect(
      (await fetch(w.webhookUrl.replace("/webhooks", "/nope"), { method: "POST" })).status,
    ).toBe(404);
    expect((await fetch(w.webhookUrl)).status).toBe(405);
    expect((await fetch(w.webhookUrl.replace("/webhooks", "/healthz"))).status).toBe(200);
  });

  test("ignores events it does not act on, and assistant or system messages", async () => {
    const w = await worker("m-never");
    const uid = userId("other");
    const { socket, chatId } = await userWithChat(server, uid);
    const message = await say(socket, chatId, "Hi");
    for (const event of [
      { type: "user.updated", timestamp: new Date().toISOString(), data: {} },
      messageCreated(uid, chatId, { ...message, role: "assistant" }),
      { type: "message.created", timestamp: new Date().toISOString(), data: { userId: uid } },
    ]) {
      const res = await post(w.webhookUrl, signed(SECRET, event));
      expect(res).toEqual({ status: 200, body: { received: true, handled: "ignored" } });
    }
    expect(requestsFor("m-never")).toHaveLength(0);
  });
});

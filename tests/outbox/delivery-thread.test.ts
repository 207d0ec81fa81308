/**
 * The outbox's delivery on its own worker thread (APP_WEBHOOK_THREAD, the default): it delivers
 * while the node's main event loop is blocked (and, as a control, the in-process delivery does
 * not); a worker that crashes is restarted and every chat's events still arrive, in order, with
 * the same webhook-ids; /metrics counts what the worker delivered.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { threadId } from "node:worker_threads";
import { afterEach, describe, expect, it } from "vitest";
import { eventually, startTestServer, type TestServer } from "../helpers/server.js";
import { ok, userId } from "../realtime/support.js";
import { newSecret, pause, type Receiver, startReceiver } from "./support.js";

/**
 * A receiver in a process of its own (so it answers while the test's event loop, which the
 * server shares, is blocked): 204 after `delayMs`; GET /log lists the arrival times.
 */
async function startOutsideReceiver(
  delayMs: number,
): Promise<{ url: string; log(): Promise<{ id: string; at: number }[]>; child: ChildProcess }> {
  const code = `
    const http = require("node:http");
    const log = [];
    http.createServer((req, res) => {
      if (req.method === "GET") { res.end(JSON.stringify(log)); return; }
      log.push({ id: req.headers["webhook-id"], at: Date.now() });
      req.resume();
      req.on("end", () => setTimeout(() => { res.statusCode = 204; res.end(); }, ${delayMs}));
    }).listen(0, "127.0.0.1", function () { process.stdout.write(this.address().port + "\\n"); });
    setTimeout(() => process.exit(0), 120000).unref();
    process.on("disconnect", () => process.exit(0));
  `;
  const child = spawn(process.execPath, ["-e", code], {
    stdio: ["ignore", "pipe", "inherit", "ipc"],
  });
  const port = await new Promise<number>((resolve, reject) => {
    child.stdout?.once("data", (b: Buffer) => resolve(Number(String(b).trim())));
    child.once("exit", (c) => reject(new Error(`receiver exited (${c})`)));
  });
  const url = `http://127.0.0.1:${port}`;
  return {
    url,
    child,
    async log() {
      return (await (await fetch(url)).json()) as { id: string; at: number }[];
    },
  };
}

/** Keeps this thread's event loop busy for `ms` (a stand-in for a saturated node). */
function blockFor(ms: number): { from: number; to: number } {
  const from = Date.now();
  while (Date.now() - from < ms) {
    // busy
  }
  return { from, to: Date.now() };
}

const cleanup: (() => Promise<unknown> | unknown)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

/** Stores `perChat` messages in each of `chats` new chats of one user; returns chat → contents. */
async function store(server: TestServer, chats: number, perChat: number) {
  const s = await server.connectAs(userId("thread"));
  const sent = new Map<string, string[]>();
  for (let c = 0; c < chats; c++) {
    const { chat } = await ok(s, "chat:create", { title: `chat ${c}` });
    sent.set(chat.id, []);
  }
  for (let i = 0; i < perChat; i++) {
    await Promise.all(
      [...sent].map(async ([chatId, contents]) => {
        const content = `m${i}`;
        contents.push(content);
        await ok(s, "message:send", { chatId, clientId: randomUUID(), content });
      }),
    );
  }
  return sent;
}

describe("the delivery on its own thread", () => {
  it("keeps delivering while the main event loop is blocked (in-process: it does not)", async () => {
    const secret = newSecret();
    const arrivedWhileBlocked: Record<string, number> = {};
    for (const thread of [true, false]) {
      const receiver = await startOutsideReceiver(10);
      cleanup.push(() => receiver.child.kill());
      const server = await startTestServer({
        appWebhooks: { url: receiver.url, secret },
        appWebhookThread: thread,
      });
      cleanup.push(() => server.close());
      if (thread) {
        // A worker thread: not this one.
        expect(server.app.deliveryThread?.threadId).toBeGreaterThan(0);
        expect(server.app.deliveryThread?.threadId).not.toBe(threadId);
      } else {
        expect(server.app.deliveryThread).toBeUndefined();
      }
      // 4 chats × 60: 240 events, 4 at a time at ≥ 10 ms each: over half a second of delivery.
      const sent = await store(server, 4, 60);
      const total = [...sent.values()].reduce((n, c) => n + c.length, 0);
      const before = (await receiver.log()).length;
      expect(before).toBeLessThan(total);
      const blocked = blockFor(600);
      const log = await receiver.log();
      arrivedWhileBlocked[String(thread)] = log.filter(
        (a) => a.at > blocked.from + 50 && a.at < blocked.to,
      ).length;
      await eventually(async () => expect((await receiver.log()).length).toBe(total), 20_000);
      for (const c of cleanup.splice(0).reverse()) await c();
    }
    // On its own thread it went on delivering (~4 per 10 ms); on the main one, nothing arrived.
    expect(arrivedWhileBlocked.true).toBeGreaterThan(10);
    expect(arrivedWhileBlocked.false).toBe(0);
  }, 90_000);

  it("a crashed worker is restarted: every event arrives, in order, same webhook-ids; /metrics counts them", async () => {
    const secret = newSecret();
    const receiver: Receiver = await startReceiver(secret);
    cleanup.push(() => receiver.close());
    // Slow answers, so the crash lands while attempts are in progress.
    receiver.answer = async () => {
      await pause(15);
      return 204;
    };
    const server = await startTestServer({ appWebhooks: { url: receiver.url, secret } });
    cleanup.push(() => server.close());
    const thread = server.app.deliveryThread;
    if (!thread) throw new Error("the delivery runs on a thread by default");
    const firstThread = thread.threadId;

    const sent = await store(server, 3, 40);
    await eventually(() => expect(receiver.delivered.length).toBeGreaterThan(10), 10_000);
    thread.crashForTest();
    await eventually(() => expect(thread.restarts).toBe(1), 10_000);
    await eventually(() => expect(thread.threadId).toBeGreaterThan(0), 10_000);
    expect(thread.threadId).not.toBe(firstThread);

    // The dead worker's leases lapse (3 s in the tests), then the new one takes the chats over.
    const byChat = (chatId: string) =>
      receiver.delivered.filter((d) => (d.data as { chatId?: string }).chatId === chatId);
    await eventually(() => {
      for (const [chatId, contents] of sent) {
        expect(new Set(byChat(chatId).map((d) => d.id)).size).toBe(contents.length);
      }
    }, 30_000);
    const contentOf = (d: (typeof receiver.delivered)[number]) =>
      (d.data as { message: { content: string } }).message.content;
    for (const [chatId, contents] of sent) {
      const got = byChat(chatId);
      // An event sent again after the crash has the same id (and the same body).
      const idOf = new Map<string, string>();
      for (const d of got) {
        const known = idOf.get(contentOf(d));
        if (known) expect(d.id).toBe(known);
        else idOf.set(contentOf(d), d.id);
      }
      // In order: the first arrival of each event follows the chat's order; no event overtakes.
      const firsts = got.filter((d, i) => got.findIndex((e) => e.id === d.id) === i);
      expect(firsts.map(contentOf)).toEqual(contents);
      // Each arrival is the next event, or one sent again (after the crash) and those after it.
      const seen = got.map((d) => contents.indexOf(contentOf(d)));
      for (let i = 1; i < seen.length; i++) {
        const [prev, cur] = [seen[i - 1] ?? -1, seen[i] ?? -1];
        expect(cur === prev + 1 || cur <= prev).toBe(true);
      }
    }
    expect(receiver.maxConcurrentPerChat).toBe(1);
    expect(receiver.badSignatures).toBe(0);

    // /metrics: what the workers delivered, counted in the node's registry (batches of 20 ms).
    const total = [...sent.values()].reduce((n, c) => n + c.length, 0);
    await eventually(async () => {
      const text = await (await fetch(`${server.url}/metrics`)).text();
      const m = /chat_webhook_delivered_total\{type="message.created"\} (\d+)/.exec(text);
      expect(Number(m?.[1])).toBeGreaterThanOrEqual(total);
      expect(text).toMatch(/chat_webhook_delivery_latency_seconds_count [1-9]/);
    }, 5000);
  }, 90_000);
});

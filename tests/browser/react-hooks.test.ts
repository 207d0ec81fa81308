/**
 * @chat-backend/react in a real Chromium, under StrictMode (React's development build, so every
 * component mounts, unmounts and mounts again), as two devices of one user against a real
 * server and Postgres (page: tests/browser/react-app.ts, bundled with esbuild):
 * - StrictMode's double mount opens one connection per device, not two;
 * - two components showing one chat share it; unmounting one keeps the other live (opens are
 *   counted), and the last unmount closes the chat;
 * - in a chat of 1,000 messages, a message from the other device renders each chat view
 *   once, and the sidebar once (its entry changed once: the server's `chat:updated`);
 * - a reply streamed by the app's backend shows as it grows and the stop hook stops it.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import type { Browser, BrowserContext, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { TestServer } from "../helpers/server.js";
import { newServiceKey, serviceClient } from "../service/support.js";
import { launchChromium, startDemoServer } from "./helpers.js";

const KEY = newServiceKey();
const USER = "react_hooks_user";
const poll = { timeout: 15_000, interval: 50 };

let server: TestServer;
let browser: Browser;
let api: ReturnType<typeof serviceClient>;
const contexts: BrowserContext[] = [];
let connections = 0;
/** WebSocket upgrade requests: every socket a client starts, even one closed at once. */
let upgrades = 0;

type RequestListener = (req: IncomingMessage, res: ServerResponse) => void;

/** Serves the test page in front of the demo server's routes (same origin: tokens, sockets). */
async function servePage(test: TestServer) {
  const bundle = await build({
    entryPoints: [fileURLToPath(new URL("react-app.ts", import.meta.url))],
    bundle: true,
    write: false,
    format: "esm",
    platform: "browser",
    target: "es2022",
    conditions: ["@chat-backend/source"],
    define: { "process.env.NODE_ENV": '"development"' },
    logLevel: "error",
  });
  const script = bundle.outputFiles[0]?.contents;
  if (!script) throw new Error("esbuild produced no output");
  const html =
    '<!doctype html><html><head><meta charset="utf-8"><title>hooks</title></head>' +
    '<body><div id="root"></div><script type="module" src="/react-app.js"></script></body></html>';
  const httpServer = test.app.io.httpServer;
  const routes = httpServer.listeners("request") as RequestListener[];
  httpServer.removeAllListeners("request");
  httpServer.on("request", (req: IncomingMessage, res: ServerResponse) => {
    const url = req.url ?? "";
    if (req.method === "GET" && url.startsWith("/react-app.html")) {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
      return res.end(html);
    }
    if (req.method === "GET" && url === "/react-app.js") {
      res.writeHead(200, { "content-type": "text/javascript; charset=utf-8" });
      return res.end(script);
    }
    for (const route of routes) route.call(httpServer, req, res);
  });
}

async function device(): Promise<Page> {
  const context = await browser.newContext();
  contexts.push(context);
  const page = await context.newPage();
  page.on("pageerror", (err) => {
    throw err;
  });
  await page.goto(`${server.url}/react-app.html?user=${USER}`);
  await expect.poll(() => page.getAttribute("#status", "data-state"), poll).toBe("online");
  return page;
}

const texts = (page: Page, view: string) =>
  page.locator(`[data-view="${view}"] p`).allTextContents();
const commits = (page: Page) => page.evaluate(() => ({ ...window.app.commits }));

/** Waits until the page's commit counts have not moved for `quietMs` (then returns them). */
async function settledCommits(page: Page, quietMs = 400): Promise<Record<string, number>> {
  let last = JSON.stringify(await commits(page));
  let since = Date.now();
  const deadline = Date.now() + 15_000;
  while (Date.now() - since < quietMs) {
    if (Date.now() > deadline) throw new Error("commits never settled");
    await new Promise((r) => setTimeout(r, 50));
    const now = JSON.stringify(await commits(page));
    if (now !== last) {
      last = now;
      since = Date.now();
    }
  }
  return JSON.parse(last) as Record<string, number>;
}

beforeAll(async () => {
  [server, browser] = await Promise.all([
    startDemoServer({ serviceApiKey: KEY }),
    launchChromium(),
  ]);
  await servePage(server);
  server.app.io.on("connection", () => {
    connections++;
  });
  server.app.io.httpServer.on("upgrade", () => {
    upgrades++;
  });
  api = serviceClient(server.url, KEY);
}, 90_000);

afterAll(async () => {
  for (const c of contexts) await c.close().catch(() => {});
  await browser?.close();
  await server?.close();
});

describe("@chat-backend/react in Chromium under StrictMode, two devices", () => {
  let desktop: Page;
  let phone: Page;
  let chatId: string;

  it("opens one connection per device despite StrictMode's double mount", async () => {
    desktop = await device();
    phone = await device();
    // Let any second client (there must be none) connect before counting.
    await settledCommits(desktop);
    await settledCommits(phone);
    expect(upgrades).toBe(2);
    expect(connections).toBe(2);
    expect(await desktop.getAttribute("#status", "data-code")).toBe("CONNECTED");
    expect(server.app.io.of("/").sockets.size).toBe(2);
  });

  it("shares one chat between two components; each renders once per incoming message", async () => {
    chatId = await desktop.evaluate(async () => {
      const client = window.app.client;
      if (!client) throw new Error("no client");
      return (await client.createChat({ title: "Shared" })).chat.id;
    });
    // A chat of 1,000 messages (stored through the service API, 10 at a time).
    const SEEDED = 1000;
    for (let i = 0; i < SEEDED; i += 10) {
      const batch = Array.from({ length: 10 }, (_, j) =>
        api.post(`/users/${USER}/chats/${chatId}/messages`, {
          clientId: `seed-${i + j}`,
          role: "assistant",
          content: `seeded ${i + j}`,
        }),
      );
      for (const r of await Promise.all(batch)) expect(r.status).toBe(201);
    }
    await desktop.evaluate((id) => {
      window.app.show("first", id);
      window.app.show("second", id);
    }, chatId);
    for (const view of ["first", "second"]) {
      await expect
        .poll(() => desktop.getAttribute(`[data-view="${view}"]`, "data-open"), poll)
        .toBe("true");
    }
    await expect.poll(() => phone.locator('[data-view="sidebar"] li').count(), poll).toBe(1);

    const N = 5;
    for (let i = 1; i <= N; i++) {
      const before = await settledCommits(desktop);
      await phone.evaluate(
        ([id, n]) => window.app.send({ chatId: id as string, content: `from the phone ${n}` }),
        [chatId, i],
      );
      for (const view of ["first", "second"]) {
        await expect.poll(() => texts(desktop, view), poll).toContain(`from the phone ${i}`);
      }
      const after = await settledCommits(desktop);
      expect((after.first ?? 0) - (before.first ?? 0)).toBe(1);
      expect((after.second ?? 0) - (before.second ?? 0)).toBe(1);
      // The chat's sidebar entry changed once: the server's `chat:updated` (new preview,
      // lastSeq, version and microsecond updatedAt) is the one change per message.
      expect((after.sidebar ?? 0) - (before.sidebar ?? 0)).toBe(1);
    }
    const shown = await texts(desktop, "first");
    expect(shown.slice(-N)).toEqual(Array.from({ length: N }, (_, i) => `from the phone ${i + 1}`));
    expect(shown.length).toBeGreaterThan(N);
  });

  it("keeps the chat live for the other component when one unmounts; closes it after the last", async () => {
    await desktop.evaluate(() => window.app.show("first", null));
    await expect.poll(() => desktop.locator('[data-view="first"]').count(), poll).toBe(0);
    // Let the deferred close of the unmounted view run.
    await settledCommits(desktop);
    await phone.evaluate(
      (id) => window.app.send({ chatId: id, content: "after one view closed" }),
      chatId,
    );
    await expect.poll(() => texts(desktop, "second"), poll).toContain("after one view closed");
    expect(await desktop.getAttribute('[data-view="second"]', "data-open")).toBe("true");

    await desktop.evaluate(() => window.app.show("second", null));
    await expect
      .poll(
        () =>
          desktop.evaluate((id) => window.app.client?.chat(id).getSnapshot().open ?? null, chatId),
        poll,
      )
      .toBe(false);
  });

  it("shows a streamed reply as it grows and stops it with useStopReply", async () => {
    await desktop.evaluate((id) => window.app.show("first", id), chatId);
    await expect
      .poll(() => desktop.getAttribute('[data-view="first"]', "data-open"), poll)
      .toBe("true");
    const streamId = "react-hooks-stream-1";
    const started = await api.post(`/users/${USER}/chats/${chatId}/streams`, { streamId });
    expect(started.status).toBe(201);
    const chunk = await api.post(`/streams/${streamId}/chunks`, { index: 0, delta: "Thinking" });
    expect(chunk.status).toBeLessThan(300);
    const streaming = desktop.locator('[data-view="first"] p[data-status="streaming"]');
    await expect.poll(() => streaming.textContent(), poll).toBe("Thinking");
    await expect
      .poll(() => phone.getAttribute('[data-view="sidebar"] li', "data-generating"), poll)
      .toBe("yes");

    const result = await desktop.evaluate(
      ([id, sid]) => window.app.stop({ chatId: id as string, streamId: sid as string }),
      [chatId, streamId],
    );
    expect(result.status).toBe("stopped");
    await expect
      .poll(() => desktop.locator('[data-view="first"] p').last().getAttribute("data-status"), poll)
      .toMatch(/^(stopped|sent)$/);
    await expect
      .poll(() => phone.getAttribute('[data-view="sidebar"] li', "data-generating"), poll)
      .toBe("no");
    const refused = await api.post(`/streams/${streamId}/chunks`, { index: 1, delta: " more" });
    expect(refused.status).toBe(409);
  });
});

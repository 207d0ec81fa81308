/**
 * The demo app in a real Chromium, as two devices of one user: a desktop window and a phone
 * (390 px), against a real server and Postgres. The test plays the app's backend through the
 * service API (it streams the assistant's replies chunk by chunk), so every step is
 * deterministic: a message and a streamed reply show on both devices as they grow, the
 * phone's chat list shows a spinner on a chat it has not opened, a reload mid-reply resumes the
 * reply and stays signed in, a stop on the phone stops the reply everywhere (the backend's next
 * chunk is refused with STREAM_STOPPED and the partial reply is stored, marked stopped), rename
 * and delete propagate, messages sent offline arrive once, in order, a send the server refuses
 * shows as failed with Retry and Discard (kept across a reload until discarded), and the
 * connection state shows with its reason (the SDK's connectionStatus). The page is the React
 * app of demo/main.tsx under StrictMode (React's development build): React may log no error.
 * Screenshots of every phase, desktop and phone, go to artifacts/.
 */
import { mkdir } from "node:fs/promises";
import path from "node:path";
import type { Browser, BrowserContext, Page } from "playwright-core";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { TestServer } from "../helpers/server.js";
import { errorOf, newServiceKey, serviceClient } from "../service/support.js";
import { launchChromium, startDemoServer } from "./helpers.js";

const USER = "browser_user";
const KEY = newServiceKey();
const ARTIFACTS = path.resolve(import.meta.dirname, "../../artifacts");
const poll = { timeout: 10_000, interval: 50 };

interface SidebarRow {
  id: string;
  title: string;
  preview: string;
  active: boolean;
  generating: boolean;
}
interface MessageRow {
  role: string;
  content: string;
  status: string;
  seq: string | null;
  meta: string;
  clientId: string;
  actions: string[];
}
interface Status {
  state: string;
  code: string;
  message: string;
}

class Device {
  constructor(
    readonly name: string,
    readonly context: BrowserContext,
    readonly page: Page,
    readonly phone: boolean,
  ) {}

  state(): Promise<string | null> {
    return this.page.getAttribute("#state", "data-state");
  }

  sidebar(): Promise<SidebarRow[]> {
    return this.page.$$eval("#sidebar li", (items) =>
      items.map((li) => ({
        id: li.getAttribute("data-chat-id") ?? "",
        title: li.querySelector(".title")?.textContent ?? "",
        preview: li.querySelector(".preview")?.textContent ?? "",
        active: li.classList.contains("active"),
        generating: li.getAttribute("data-generating") === "true",
      })),
    );
  }

  async titles(): Promise<string[]> {
    return (await this.sidebar()).map((r) => r.title);
  }

  messages(): Promise<MessageRow[]> {
    return this.page.$$eval("#messages li", (items) =>
      items.map((li) => ({
        role: li.getAttribute("data-role") ?? "",
        content: li.querySelector(".content")?.textContent ?? "",
        status: li.getAttribute("data-status") ?? "",
        seq: li.getAttribute("data-seq"),
        meta: li.querySelector(".meta")?.textContent ?? "",
        clientId: li.getAttribute("data-client-id") ?? "",
        actions: Array.from(li.querySelectorAll(".meta button"), (b) => b.textContent ?? ""),
      })),
    );
  }

  /** What the page shows of the connection: the pill, and the reason line under the top bar. */
  async connection(): Promise<{
    state: string | null;
    code: string | null;
    reason: string | null;
  }> {
    const reason = this.page.locator("#connection-reason");
    return {
      state: await this.page.getAttribute("#state", "data-state"),
      code: await this.page.getAttribute("#state", "data-code"),
      reason: (await reason.count()) > 0 ? await reason.textContent() : null,
    };
  }

  /** The SDK's own connectionStatus of the page's client. */
  status(): Promise<Status> {
    return this.page.evaluate(() => {
      const demo = (window as unknown as { chatDemo: { client: ChatClientLike } }).chatDemo;
      return { ...demo.client.connectionStatus.getSnapshot() };
    });
  }

  /** Clients ids of this device's outbox entries. */
  outbox(): Promise<string[]> {
    return this.page.evaluate(() => {
      const demo = (window as unknown as { chatDemo: { client: ChatClientLike } }).chatDemo;
      return demo.client.outbox.getSnapshot().map((e) => e.clientId);
    });
  }

  /**
   * Types text the way a paste would (React sees the input event) and sends it with Enter;
   * for text `fill` cannot type, such as a NUL character.
   */
  async sendRaw(content: string): Promise<void> {
    await this.page.evaluate((text) => {
      const field = document.querySelector("#content") as HTMLTextAreaElement;
      const setValue = Object.getOwnPropertyDescriptor(HTMLTextAreaElement.prototype, "value");
      setValue?.set?.call(field, text);
      field.dispatchEvent(new Event("input", { bubbles: true }));
    }, content);
    await this.page.press("#content", "Enter");
  }

  async signIn(userId: string): Promise<void> {
    await this.page.fill("#user-id", userId);
    await this.page.click("#signin button");
    await this.page.waitForSelector('#state[data-state="online"]', { timeout: poll.timeout });
  }

  /** On a phone the chat list is a drawer: open it first. */
  async showList(): Promise<void> {
    if (this.phone && !(await this.page.isVisible("#app.drawer-open"))) {
      await this.page.click("#menu");
      await this.page.waitForSelector("#app.drawer-open #sidebar", { state: "visible" });
      await this.drawerSettled(true);
    }
  }

  /** Waits for the drawer's slide to end (open: at the left edge; closed: off screen). */
  async drawerSettled(open: boolean): Promise<void> {
    if (!this.phone) return;
    await expect
      .poll(async () => {
        const box = await this.page.locator("#drawer").boundingBox();
        return open ? box?.x === 0 : (box?.x ?? 0) + (box?.width ?? 0) <= 0;
      }, poll)
      .toBe(true);
  }

  async newChat(): Promise<string> {
    await this.showList();
    const before = new Set((await this.sidebar()).map((r) => r.id));
    await this.page.click("#new-chat");
    await this.drawerSettled(false);
    return expect
      .poll(async () => (await this.sidebar()).find((r) => r.active && !before.has(r.id))?.id, poll)
      .toBeTruthy()
      .then(async () => (await this.sidebar()).find((r) => r.active)?.id as string);
  }

  async open(chatId: string): Promise<void> {
    await this.showList();
    await this.page.click(`#sidebar li[data-chat-id="${chatId}"]`);
    await this.drawerSettled(false);
    await expect.poll(() => this.page.isVisible("#chat"), poll).toBe(true);
    await expect
      .poll(async () => (await this.sidebar()).find((r) => r.active)?.id, poll)
      .toBe(chatId);
  }

  async send(content: string): Promise<void> {
    await this.page.fill("#content", content);
    await this.page.press("#content", "Enter");
  }

  async screenshot(phase: string): Promise<void> {
    await mkdir(ARTIFACTS, { recursive: true });
    await this.page.screenshot({ path: path.join(ARTIFACTS, `demo-${phase}-${this.name}.png`) });
  }
}

/** The part of the page's ChatClient (window.chatDemo.client) the test reads. */
interface ChatClientLike {
  connectionStatus: { getSnapshot(): Status };
  outbox: { getSnapshot(): { clientId: string }[] };
}

let server: TestServer;
let browser: Browser;
let api: ReturnType<typeof serviceClient>;
let desktop: Device;
let phone: Device;
/** Uncaught errors in either page; every test checks there were none. */
const pageErrors: string[] = [];
/**
 * Errors logged by the page's script (React's warnings: keys, effects, StrictMode, …); the
 * browser's own network errors while offline are not the app's.
 */
const consoleErrors: string[] = [];
const networkNoise = /WebSocket connection|Failed to load resource|net::ERR_/;

async function device(name: string, phoneSized: boolean): Promise<Device> {
  const context = await browser.newContext(
    phoneSized
      ? {
          viewport: { width: 390, height: 844 },
          isMobile: true,
          hasTouch: true,
          deviceScaleFactor: 2,
        }
      : { viewport: { width: 1280, height: 800 } },
  );
  const page = await context.newPage();
  page.on("pageerror", (err) => pageErrors.push(`${name}: ${err.message}`));
  page.on("console", (msg) => {
    if (msg.type() === "error" && !networkNoise.test(msg.text())) {
      consoleErrors.push(`${name}: ${msg.text()}`);
    }
  });
  await page.goto(server.url);
  return new Device(name, context, page, phoneSized);
}

/** The app's backend: a reply streamed through the service API, chunk by chunk. */
class Reply {
  private index = 0;
  text = "";
  constructor(readonly streamId: string) {}

  static async start(chatId: string): Promise<Reply> {
    const streamId = `reply-${Math.random().toString(36).slice(2)}`;
    const r = await api.post(`/users/${USER}/chats/${chatId}/streams`, { streamId });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    return new Reply(streamId);
  }

  chunk(delta: string) {
    const index = this.index++;
    this.text += delta;
    return api.post(`/streams/${this.streamId}/chunks`, { index, delta });
  }
}

beforeAll(async () => {
  [server, browser] = await Promise.all([
    startDemoServer({ serviceApiKey: KEY }),
    launchChromium(),
  ]);
  api = serviceClient(server.url, KEY);
  [desktop, phone] = await Promise.all([device("desktop", false), device("phone", true)]);
});

afterEach(() => {
  expect(pageErrors).toEqual([]);
  expect(consoleErrors).toEqual([]);
});

afterAll(async () => {
  await browser?.close();
  await server?.close();
});

const sockets = async () => (await server.app.io.in(`user:${USER}`).fetchSockets()).length;

describe("the demo app on a desktop and a phone of one user", () => {
  let chatId: string;
  let other: string;

  it("serves the page under its Content-Security-Policy: no inline script, a linked map", async () => {
    const page = await fetch(server.url);
    const csp = page.headers.get("content-security-policy") ?? "";
    expect(csp).toContain("default-src 'self'");
    expect(csp).not.toMatch(/script-src|unsafe-eval/);
    const html = await page.text();
    expect(html.match(/<script\b[^>]*>/g)).toEqual(['<script type="module" src="/demo.js">']);
    const script = await (await fetch(`${server.url}/demo.js`)).text();
    expect(script).toMatch(/\/\/# sourceMappingURL=demo\.js\.map\s*$/);
    const map = await fetch(`${server.url}/demo.js.map`);
    expect(map.status).toBe(200);
    const { sources } = (await map.json()) as { sources: string[] };
    expect(sources.filter((s) => s.endsWith("demo/main.tsx"))).toHaveLength(1);
  });

  it("signs in on both devices, and a reload stays signed in", async () => {
    await desktop.screenshot("signin");
    await Promise.all([desktop.signIn(USER), phone.signIn(USER)]);
    expect(await desktop.page.isVisible("#signin-screen")).toBe(false);
    await phone.page.reload();
    await phone.page.waitForSelector('#state[data-state="online"]', { timeout: poll.timeout });
    expect(await phone.page.isVisible("#signin-screen")).toBe(false);
    await expect.poll(sockets, poll).toBe(2);
    await Promise.all([desktop.screenshot("empty"), phone.screenshot("empty")]);
  });

  it("shows a new chat and a message on both devices, with times, titled by the message", async () => {
    other = await desktop.newChat();
    chatId = await desktop.newChat();
    // A chat with nothing in it says what to do, until its first message.
    await desktop.page.waitForSelector("#chat-empty", { timeout: poll.timeout });
    await desktop.screenshot("new-chat");
    await desktop.send("What should I pack for Lisbon?");
    await desktop.page.waitForSelector("#chat-empty", { state: "detached", timeout: poll.timeout });
    for (const d of [desktop, phone]) {
      await expect
        .poll(async () => (await d.sidebar()).map((r) => r.title), poll)
        .toEqual(["What should I pack for Lisbon?", "New Chat"]);
    }
    await expect
      .poll(async () => (await desktop.messages()).map((m) => [m.role, m.content, m.status]), poll)
      .toEqual([["user", "What should I pack for Lisbon?", "sent"]]);
    const [sent] = await desktop.messages();
    expect(sent?.meta).toMatch(/\d{1,2}:\d{2}/);
    expect(sent?.meta).not.toMatch(/#/);
  });

  let reply: Reply;

  it("streams a reply on the desktop as it grows, with a spinner in the phone's list", async () => {
    await phone.open(other);
    await phone.page.waitForSelector("#chat-empty", { timeout: poll.timeout });
    await phone.screenshot("new-chat");
    reply = await Reply.start(chatId);
    for (const word of ["Pack ", "light ", "layers, "]) {
      expect((await reply.chunk(word)).status).toBe(200);
      await expect
        .poll(async () => (await desktop.messages()).at(-1), poll)
        .toMatchObject({ role: "assistant", status: "streaming", content: reply.text });
    }
    expect(await desktop.page.isVisible("#stop")).toBe(true);
    await phone.showList();
    await expect
      .poll(async () => (await phone.sidebar()).find((r) => r.id === chatId)?.generating, poll)
      .toBe(true);
    expect(await phone.page.isVisible(`#sidebar li[data-chat-id="${chatId}"] .spinner`)).toBe(true);
    await Promise.all([desktop.screenshot("streaming"), phone.screenshot("spinner")]);
    // The desktop's list, too, shows the spinner on the chat while another one is open.
    await desktop.open(other);
    expect(await desktop.page.isVisible("#stop")).toBe(false);
    expect(await desktop.page.isVisible(`#sidebar li[data-chat-id="${chatId}"] .spinner`)).toBe(
      true,
    );
    await desktop.screenshot("spinner");
    await desktop.open(chatId);
    await expect
      .poll(async () => (await desktop.messages()).at(-1), poll)
      .toMatchObject({ role: "assistant", status: "streaming", content: reply.text });
  });

  it("resumes the reply after a reload mid-reply, then keeps growing", async () => {
    await desktop.page.reload();
    await desktop.page.waitForSelector('#state[data-state="online"]', { timeout: poll.timeout });
    await expect
      .poll(async () => (await desktop.messages()).at(-1), poll)
      .toMatchObject({ role: "assistant", status: "streaming", content: reply.text });
    expect((await reply.chunk("good shoes ")).status).toBe(200);
    await expect
      .poll(async () => (await desktop.messages()).at(-1)?.content, poll)
      .toBe(reply.text);
  });

  it("stops the reply from the phone: stopped everywhere, kept, and the backend is refused", async () => {
    await phone.open(chatId);
    await expect
      .poll(async () => (await phone.messages()).at(-1), poll)
      .toMatchObject({ role: "assistant", status: "streaming", content: reply.text });
    await phone.screenshot("streaming");
    await phone.page.click("#stop");
    const partial = reply.text;
    for (const d of [desktop, phone]) {
      await expect
        .poll(async () => {
          const last = (await d.messages()).at(-1);
          return [last?.role, last?.content, /Stopped/.test(last?.meta ?? "")];
        }, poll)
        .toEqual(["assistant", partial, true]);
      await expect.poll(() => d.page.isVisible("#stop"), poll).toBe(false);
    }
    const late = await reply.chunk("and an umbrella.");
    expect(late.status).toBe(409);
    expect(errorOf(late).code).toBe("STREAM_STOPPED");
    const stored = await server.database.sql<{ content: string; stopped: boolean | null }[]>`
      select message->>'content' as content, (message->>'stopped')::boolean as stopped
        from chat_memory where session_id = ${chatId} and client_id = ${reply.streamId}`;
    expect(stored).toEqual([{ content: partial, stopped: true }]);
    await phone.screenshot("stopped");
    await phone.showList();
    await expect
      .poll(async () => (await phone.sidebar()).find((r) => r.id === chatId)?.generating, poll)
      .toBe(false);
    await Promise.all([desktop.screenshot("stopped"), phone.screenshot("list")]);
  });

  it("propagates rename and delete", async () => {
    await desktop.page.fill("#title", "Lisbon trip");
    await desktop.page.press("#title", "Enter");
    await expect
      .poll(async () => (await phone.sidebar()).find((r) => r.id === chatId)?.title, poll)
      .toBe("Lisbon trip");

    await phone.open(other);
    await desktop.open(other);
    await desktop.page.click("#delete");
    for (const d of [desktop, phone]) {
      await expect.poll(() => d.titles(), poll).toEqual(["Lisbon trip"]);
      await expect.poll(() => d.page.isVisible("#chat"), poll).toBe(false);
    }
    const rows = await server.database.sql<{ count: number }[]>`
      select count(*)::int as count from chat_sessions where id = ${other}`;
    expect(rows[0]?.count).toBe(0);
  });

  it("delivers messages sent offline exactly once, in order, on both devices", async () => {
    await Promise.all([desktop.open(chatId), phone.open(chatId)]);
    const before = (await desktop.messages()).map((m) => m.content);
    await desktop.context.setOffline(true);
    await expect.poll(() => desktop.state(), poll).toBe("offline");
    await expect.poll(sockets, poll).toBe(1);
    // The state with its reason, as the SDK's connectionStatus has it: on the pill, and in
    // words (with the code) under the top bar.
    await expect
      .poll(async () => {
        const [sdk, shown] = await Promise.all([desktop.status(), desktop.connection()]);
        const explained = shown.reason?.includes(sdk.message) && shown.reason.includes(sdk.code);
        return { ...shown, reason: explained ? "the SDK's" : shown.reason, sdk: sdk.state };
      }, poll)
      .toEqual({
        state: "offline",
        code: expect.stringMatching(/^(NETWORK_UNAVAILABLE|TRANSPORT_ERROR)$/),
        reason: "the SDK's",
        sdk: "offline",
      });

    await desktop.send("offline 1");
    await desktop.send("offline 2");
    await expect
      .poll(
        async () => (await desktop.messages()).slice(-2).map((m) => [m.content, m.status]),
        poll,
      )
      .toEqual([
        ["offline 1", "pending"],
        ["offline 2", "pending"],
      ]);
    await desktop.screenshot("offline");

    await desktop.context.setOffline(false);
    await expect.poll(() => desktop.state(), poll).toBe("online");
    await expect
      .poll(() => desktop.connection(), poll)
      .toEqual({ state: "online", code: "CONNECTED", reason: null });
    for (const d of [desktop, phone]) {
      await expect
        .poll(async () => (await d.messages()).map((m) => [m.content, m.status]), poll)
        .toEqual([...before.map((c) => [c, "sent"]), ["offline 1", "sent"], ["offline 2", "sent"]]);
    }
    const stored = await server.database.sql<{ content: string }[]>`
      select message->>'content' as content from chat_memory
       where session_id = ${chatId} order by seq`;
    expect(stored.map((r) => r.content)).toEqual([...before, "offline 1", "offline 2"]);
    await Promise.all([desktop.screenshot("final"), phone.screenshot("final")]);
  });
  it("shows a send the server refuses as failed on its device, with retry and discard", async () => {
    const before = (await desktop.messages()).map((m) => m.content);
    // Postgres cannot store a NUL character: the server refuses the message (INVALID_PAYLOAD),
    // and the outbox gives up on it instead of retrying.
    const refused = `A paste with a NUL (${String.fromCharCode(0)}) in it`;
    await Promise.all([desktop.sendRaw(refused), phone.sendRaw(refused)]);
    for (const d of [desktop, phone]) {
      await expect
        .poll(async () => {
          const rows = await d.messages();
          const last = rows.at(-1);
          return [rows.length, last?.content, last?.status, last?.meta, last?.actions];
        }, poll)
        .toEqual([
          before.length + 1,
          refused,
          "failed",
          "Not sent (INVALID_PAYLOAD)RetryDiscard",
          ["Retry", "Discard"],
        ]);
    }
    await Promise.all([desktop.screenshot("failed"), phone.screenshot("failed")]);

    // Retry sends it again (the server sees it once more), and it fails again.
    const failed = (await desktop.messages()).at(-1)!.clientId;
    const sent: string[] = [];
    const listener = (event: string, payload: { clientId?: string } | undefined) => {
      if (event === "message:send" && payload?.clientId) sent.push(payload.clientId);
    };
    const serverSockets = [...server.app.io.of("/").sockets.values()];
    for (const socket of serverSockets) socket.onAny(listener);
    try {
      await desktop.page.click(`#messages li[data-client-id="${failed}"] [data-action="retry"]`);
      await expect.poll(() => sent, poll).toEqual([failed]);
      await expect
        .poll(async () => (await desktop.messages()).at(-1), poll)
        .toMatchObject({ clientId: failed, status: "failed", actions: ["Retry", "Discard"] });
    } finally {
      for (const socket of serverSockets) socket.offAny(listener);
    }

    // Kept across a reload (the outbox is in IndexedDB) until discarded.
    await phone.page.reload();
    await phone.page.waitForSelector('#state[data-state="online"]', { timeout: poll.timeout });
    await expect
      .poll(async () => (await phone.messages()).at(-1), poll)
      .toMatchObject({ content: refused, status: "failed", actions: ["Retry", "Discard"] });
    for (const d of [desktop, phone]) {
      const clientId = (await d.messages()).at(-1)!.clientId;
      await d.page.click(`#messages li[data-client-id="${clientId}"] [data-action="discard"]`);
      await expect
        .poll(async () => (await d.messages()).map((m) => m.content), poll)
        .toEqual(before);
      await expect.poll(() => d.outbox(), poll).toEqual([]);
    }
    await phone.page.reload();
    await phone.page.waitForSelector('#state[data-state="online"]', { timeout: poll.timeout });
    await expect
      .poll(async () => (await phone.messages()).map((m) => [m.content, m.status]), poll)
      .toEqual(before.map((c) => [c, "sent"]));
    const stored = await server.database.sql<{ count: number }[]>`
      select count(*)::int as count from chat_memory
       where session_id = ${chatId} and message->>'content' like 'A paste with a NUL%'`;
    expect(stored[0]?.count).toBe(0);
  });

  it("says why it is signed out when there is no token for the user", async () => {
    // Another phone, signing in with an id the development token endpoint refuses.
    const refused = await device("phone", true);
    try {
      await refused.page.fill("#user-id", "not a valid id!");
      await refused.page.click("#signin button");
      await expect
        .poll(async () => {
          const [sdk, shown] = await Promise.all([refused.status(), refused.connection()]);
          const explained = shown.reason?.includes(sdk.message) && shown.reason.includes(sdk.code);
          return { ...shown, reason: explained ? "the SDK's" : shown.reason, sdk: sdk.state };
        }, poll)
        .toEqual({ state: "signedOut", code: "NO_TOKEN", reason: "the SDK's", sdk: "signedOut" });
      expect(await refused.page.textContent("#state")).toBe("signed out");
      expect(await refused.page.textContent("#connection-reason")).toContain("You are signed out");
      // Nothing to create without a session; the start screen offers to sign in again.
      expect(await refused.page.isDisabled("#new-chat")).toBe(true);
      expect(await refused.page.isVisible("#empty-new")).toBe(false);
      await refused.screenshot("signed-out");
      await refused.page.click("#empty-signin");
      await refused.page.waitForSelector("#signin-screen", { timeout: poll.timeout });
    } finally {
      await refused.context.close();
    }
  });
});

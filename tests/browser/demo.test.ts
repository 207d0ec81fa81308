/**
 * The demo page in a real Chromium, as two devices of one user (two browser contexts), against
 * a real server and Postgres: sidebar, messages, rename and delete propagate live, and messages
 * sent while a device is offline arrive exactly once, in order, on both.
 */
import { mkdir } from "node:fs/promises";
import path from "node:path";
import type { Browser, BrowserContext, Page } from "playwright-core";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { TestServer } from "../helpers/server.js";
import { launchChromium, startDemoServer } from "./helpers.js";

const USER = "browser_user";
const ARTIFACTS = path.resolve(import.meta.dirname, "../../artifacts");
const poll = { timeout: 8000, interval: 50 };

interface SidebarRow {
  id: string;
  title: string;
  preview: string;
  active: boolean;
}
interface MessageRow {
  content: string;
  status: string;
  seq: string | null;
}

class Device {
  constructor(
    readonly name: string,
    readonly context: BrowserContext,
    readonly page: Page,
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
      })),
    );
  }

  async titles(): Promise<string[]> {
    return (await this.sidebar()).map((r) => r.title);
  }

  messages(): Promise<MessageRow[]> {
    return this.page.$$eval("#messages li", (items) =>
      items.map((li) => ({
        content: li.querySelector(".content")?.textContent ?? "",
        status: li.getAttribute("data-status") ?? "",
        seq: li.getAttribute("data-seq"),
      })),
    );
  }

  async signIn(userId: string): Promise<void> {
    await this.page.fill("#user-id", userId);
    await this.page.click("#signin button");
    await this.page.waitForSelector('#state[data-state="online"]', { timeout: poll.timeout });
  }

  async createChat(title: string): Promise<void> {
    await this.page.fill("#new-title", title);
    await this.page.click("#new-chat button");
    await expect
      .poll(async () => (await this.sidebar()).find((r) => r.active)?.title, poll)
      .toBe(title);
  }

  async open(title: string): Promise<void> {
    await this.page.locator("#sidebar li", { hasText: title }).first().click();
    await expect.poll(() => this.page.inputValue("#title"), poll).toBe(title);
    await expect.poll(() => this.page.isVisible("#chat"), poll).toBe(true);
  }

  async send(content: string): Promise<void> {
    await this.page.fill("#content", content);
    await this.page.press("#content", "Enter");
  }

  async screenshot(): Promise<void> {
    await this.page.screenshot({ path: path.join(ARTIFACTS, `demo-${this.name}.png`) });
  }
}

let server: TestServer;
let browser: Browser;
let a: Device;
let b: Device;
/** Uncaught errors in either page; every test checks there were none. */
const pageErrors: string[] = [];

async function device(name: string): Promise<Device> {
  const context = await browser.newContext({ viewport: { width: 1000, height: 640 } });
  const page = await context.newPage();
  page.on("pageerror", (err) => pageErrors.push(`${name}: ${err.message}`));
  await page.goto(server.url);
  return new Device(name, context, page);
}

beforeAll(async () => {
  [server, browser] = await Promise.all([startDemoServer(), launchChromium()]);
  [a, b] = await Promise.all([device("a"), device("b")]);
  await Promise.all([a.signIn(USER), b.signIn(USER)]);
});

afterEach(() => {
  expect(pageErrors).toEqual([]);
});

afterAll(async () => {
  await browser?.close();
  await server?.close();
});

const sockets = async () => (await server.app.io.in(`user:${USER}`).fetchSockets()).length;

describe("demo page on two devices of one user", () => {
  it("shows a chat created on one device in the other's sidebar", async () => {
    expect(await sockets()).toBe(2);
    await a.createChat("Alpha");
    await expect.poll(() => b.titles(), poll).toEqual(["Alpha"]);
    const [row] = await b.sidebar();
    expect(row?.preview).toBe("No messages yet");
    expect(row?.id).toBe((await a.sidebar())[0]?.id);
  });

  it("shows a message on both devices and moves its chat up with the new preview", async () => {
    await a.createChat("Beta");
    await expect.poll(() => b.titles(), poll).toEqual(["Beta", "Alpha"]);
    await Promise.all([a.open("Alpha"), b.open("Alpha")]);

    await a.send("hello from A");
    for (const d of [a, b]) {
      await expect
        .poll(() => d.messages(), poll)
        .toEqual([{ content: "hello from A", status: "sent", seq: "1" }]);
      await expect
        .poll(async () => (await d.sidebar()).map((r) => [r.title, r.preview]), poll)
        .toEqual([
          ["Alpha", "hello from A"],
          ["Beta", "No messages yet"],
        ]);
    }

    await b.send("hi from B");
    for (const d of [a, b]) {
      await expect
        .poll(async () => (await d.messages()).map((m) => [m.seq, m.content, m.status]), poll)
        .toEqual([
          ["1", "hello from A", "sent"],
          ["2", "hi from B", "sent"],
        ]);
    }
    await expect.poll(async () => (await a.sidebar())[0]?.preview, poll).toBe("hi from B");
  });

  it("propagates rename and delete", async () => {
    await b.page.fill("#title", "Alpha (renamed)");
    await b.page.click("#rename button");
    await expect.poll(() => a.titles(), poll).toEqual(["Alpha (renamed)", "Beta"]);
    await expect.poll(() => a.page.inputValue("#title"), poll).toBe("Alpha (renamed)");

    // B looks at Beta while A deletes it: it disappears from B's sidebar and view.
    await b.open("Beta");
    await a.open("Beta");
    await a.page.click("#delete");
    for (const d of [a, b]) {
      await expect.poll(() => d.titles(), poll).toEqual(["Alpha (renamed)"]);
      await expect.poll(() => d.page.isVisible("#chat"), poll).toBe(false);
    }
    const rows = await server.database.sql<{ count: number }[]>`
      select count(*)::int as count from chat_sessions where title = 'Beta'`;
    expect(rows[0]?.count).toBe(0);
  });

  it("delivers messages sent offline exactly once, in order, on both devices", async () => {
    await Promise.all([a.open("Alpha (renamed)"), b.open("Alpha (renamed)")]);
    await expect.poll(async () => (await a.messages()).length, poll).toBe(2);

    await a.context.setOffline(true);
    await expect.poll(() => a.state(), poll).toBe("offline");
    // The connection is really gone: only B's socket is left on the server.
    await expect.poll(sockets, poll).toBe(1);

    await a.send("offline 1");
    await a.send("offline 2");
    await expect
      .poll(async () => (await a.messages()).map((m) => [m.content, m.status]), poll)
      .toEqual([
        ["hello from A", "sent"],
        ["hi from B", "sent"],
        ["offline 1", "pending"],
        ["offline 2", "pending"],
      ]);
    expect((await b.messages()).map((m) => m.content)).toEqual(["hello from A", "hi from B"]);

    await a.context.setOffline(false);
    await expect.poll(() => a.state(), poll).toBe("online");
    const expected = [
      ["1", "hello from A", "sent"],
      ["2", "hi from B", "sent"],
      ["3", "offline 1", "sent"],
      ["4", "offline 2", "sent"],
    ];
    for (const d of [a, b]) {
      await expect
        .poll(async () => (await d.messages()).map((m) => [m.seq, m.content, m.status]), poll)
        .toEqual(expected);
      await expect.poll(async () => (await d.sidebar())[0]?.preview, poll).toBe("offline 2");
    }
    const stored = await server.database.sql<{ seq: number; content: string }[]>`
      select m.seq::int as seq, m.message->>'content' as content
      from chat_memory m join chat_sessions s on s.id = m.session_id
      where s.title = 'Alpha (renamed)' order by m.seq`;
    expect(stored.map((r) => [String(r.seq), r.content, "sent"])).toEqual(expected);
    expect(await sockets()).toBe(2);

    await mkdir(ARTIFACTS, { recursive: true });
    await Promise.all([a.screenshot(), b.screenshot()]);
  });
});

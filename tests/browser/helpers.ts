/**
 * A real server node serving the demo page, with `POST /dev/token` minting test-key tokens, and
 * a real headless Chromium (Debian's /usr/bin/chromium) driven by playwright-core.
 */
import { existsSync } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import { type Browser, chromium } from "playwright-core";
import { createDemoHandler } from "../../server/src/http/demo.js";
import { sendJson } from "../../server/src/http/routes.js";
import {
  startTestServer,
  type TestServer,
  type TestServerOptions,
  tokenFor,
} from "../helpers/server.js";

export const CHROMIUM = "/usr/bin/chromium";

type RequestListener = (req: IncomingMessage, res: ServerResponse) => void;

/** Reads a small JSON body (the dev token request). */
async function jsonBody(req: IncomingMessage): Promise<unknown> {
  let text = "";
  for await (const chunk of req) {
    text += String(chunk);
    if (text.length > 4096) return undefined;
  }
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/**
 * A test server (startTestServer: real node, fresh Postgres) with, in front of its HTTP
 * routes, what development mode adds for the demo: the page (createDemoHandler) and
 * `POST /dev/token {userId}` minting tokens the server accepts (tokenFor).
 */
export async function startDemoServer(options: TestServerOptions = {}): Promise<TestServer> {
  const [server, demo] = await Promise.all([startTestServer(options), createDemoHandler()]);
  const httpServer = server.app.io.httpServer;
  // Socket.IO has wrapped the application's routes in its own request listener.
  const routes = httpServer.listeners("request") as RequestListener[];
  httpServer.removeAllListeners("request");
  const devToken = async (req: IncomingMessage, res: ServerResponse) => {
    const userId = ((await jsonBody(req)) as { userId?: unknown } | undefined)?.userId;
    if (typeof userId !== "string" || !/^[A-Za-z0-9_-]{1,64}$/.test(userId)) {
      return sendJson(res, 400, { error: { code: "INVALID_PAYLOAD", message: "bad userId" } });
    }
    sendJson(res, 200, { token: await tokenFor(userId) });
  };
  httpServer.on("request", (req: IncomingMessage, res: ServerResponse) => {
    const handle = async () => {
      if (req.method === "POST" && req.url === "/dev/token") return devToken(req, res);
      if (await demo(req, res)) return;
      for (const route of routes) route.call(httpServer, req, res);
    };
    handle().catch((err: unknown) => {
      if (!res.headersSent) res.writeHead(500);
      res.end(String(err));
    });
  });
  return server;
}

/** Headless Chromium. Fails (never skips) when the browser is not installed. */
export async function launchChromium(): Promise<Browser> {
  if (!existsSync(CHROMIUM)) {
    throw new Error(
      `The browser tests need Chromium at ${CHROMIUM} (Debian: apt-get install -y chromium)`,
    );
  }
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 20_000,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

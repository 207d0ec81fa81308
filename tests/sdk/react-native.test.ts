/**
 * The client where React Native runs it: bundled for React Native (esbuild, the
 * `react-native` condition, socket.io-client's browser build) and run in a fresh V8 context
 * whose only globals are those React Native provides to it: timers, WebSocket (the `ws`
 * package), `navigator.product === "ReactNative"`, `atob`, and no `window`, `document`,
 * `indexedDB`, `crypto` (so no `crypto.randomUUID` nor `getRandomValues`) or `process`.
 * Against a real server: it connects, creates and opens a chat, sends (client ids made
 * without crypto), goes offline and back as NetInfo would say, and the message queued in
 * the AsyncStorage-shaped outbox is delivered once.
 */
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import vm from "node:vm";
import { build } from "esbuild";
import { afterAll, beforeAll, expect, it } from "vitest";
import { startTestServer, type TestServer, tokenFor } from "../helpers/server.js";
import { storedMessages } from "./helpers.js";

let server: TestServer;

beforeAll(async () => {
  server = await startTestServer();
});
afterAll(() => server?.close());

type Scenario = typeof import("./rn-app.js").run;

it("runs without window, document, indexedDB or crypto.randomUUID", async () => {
  const bundle = await build({
    entryPoints: [fileURLToPath(new URL("rn-app.ts", import.meta.url))],
    bundle: true,
    write: false,
    format: "iife",
    globalName: "RNApp",
    platform: "browser",
    target: "es2020",
    conditions: ["react-native", "@chat-backend/source"],
    logLevel: "error",
  });
  const code = bundle.outputFiles[0]?.text;
  if (!code) throw new Error("esbuild produced no output");

  // socket.io-client's own WebSocket dependency in Node stands in for React Native's.
  const require = createRequire(import.meta.url);
  const { WebSocket } = require("ws") as { WebSocket: unknown };
  const context = vm.createContext({
    setTimeout,
    clearTimeout,
    setInterval,
    clearInterval,
    queueMicrotask,
    console,
    WebSocket,
    atob,
    navigator: { product: "ReactNative" },
  });
  vm.runInContext(code, context, { filename: "rn-app.bundle.js" });
  const run = (context as unknown as { RNApp: { run: Scenario } }).RNApp.run;

  const userId = "sdk_react_native";
  const result = await run({ url: server.url, token: await tokenFor(userId), userId });

  expect(result.globals).toEqual({
    window: "undefined",
    document: "undefined",
    indexedDB: "undefined",
    crypto: "undefined",
    process: "undefined",
  });
  expect(result.sentClientId).toMatch(
    /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/,
  );
  expect(result.stateOffline).toBe("offline");
  expect(result.pendingWhileOffline).toEqual(["pending"]);
  expect(result.storedWhileOffline).toHaveLength(1);
  expect(JSON.parse(result.storedWhileOffline[0] ?? "[]")).toMatchObject([
    { content: "sent while offline", status: "pending" },
  ]);
  expect(result.delivered).toEqual({ seq: 2, content: "sent while offline" });
  expect(result.storedAfter).toEqual([]);
  expect(result.items).toEqual([
    ["hello from RN", "sent"],
    ["sent while offline", "sent"],
  ]);
  const rows = await storedMessages(server, result.chatId);
  expect(rows.map((r) => [r.seq, r.content])).toEqual([
    [1, "hello from RN"],
    [2, "sent while offline"],
  ]);
});

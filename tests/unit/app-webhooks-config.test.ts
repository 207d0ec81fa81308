/** APP_WEBHOOK_*: off without a URL, checked at start, defaults that keep delays in seconds. */
import { describe, expect, test } from "vitest";
import { ConfigError, loadConfig } from "../../server/src/config.js";
import { retryDelayMs } from "../../server/src/services/app-event-delivery.js";

const secret = `whsec_${Buffer.alloc(32, 7).toString("base64")}`;

describe("APP_WEBHOOK_* configuration", () => {
  test("off without a URL", () => {
    expect(loadConfig({}).appWebhooks).toBeUndefined();
  });

  test("defaults: 10 s timeout, first retry in 1 s, capped at 60 s, retried for 24 h", () => {
    const c = loadConfig({
      APP_WEBHOOK_URL: "https://backend.example.com/hooks",
      APP_WEBHOOK_SECRET: secret,
    });
    expect(c.appWebhooks).toEqual({
      url: "https://backend.example.com/hooks",
      secret,
      timeoutMs: 10_000,
      retryForSeconds: 86_400,
      retryFirstDelayMs: 1000,
      retryMaxDelayMs: 60_000,
      concurrency: 64,
      nodeTimeoutMs: 15_000,
    });
  });

  test("the delivery runs on its own thread unless APP_WEBHOOK_THREAD is false", () => {
    expect(loadConfig({}).appWebhookThread).toBe(true);
    expect(loadConfig({ APP_WEBHOOK_THREAD: "true" }).appWebhookThread).toBe(true);
    expect(loadConfig({ APP_WEBHOOK_THREAD: "false" }).appWebhookThread).toBe(false);
    expect(loadConfig({ APP_WEBHOOK_THREAD: "0" }).appWebhookThread).toBe(false);
  });

  test.each([
    [{ APP_WEBHOOK_URL: "https://b.example.com" }, "APP_WEBHOOK_SECRET"],
    [{ APP_WEBHOOK_URL: "ftp://b.example.com", APP_WEBHOOK_SECRET: secret }, "APP_WEBHOOK_URL"],
    [
      { APP_WEBHOOK_URL: "https://b.example.com", APP_WEBHOOK_SECRET: "hunter2" },
      "APP_WEBHOOK_SECRET",
    ],
    [
      {
        APP_WEBHOOK_URL: "https://b.example.com",
        APP_WEBHOOK_SECRET: secret,
        APP_WEBHOOK_NODE_TIMEOUT_MS: "5000",
      },
      "APP_WEBHOOK_NODE_TIMEOUT_MS",
    ],
    [{ APP_WEBHOOK_TIMEOUT_MS: "0" }, "APP_WEBHOOK_TIMEOUT_MS"],
    [{ APP_WEBHOOK_THREAD: "yes" }, "APP_WEBHOOK_THREAD"],
  ])("refuses %o, naming %s", (env, name) => {
    expect(() => loadConfig(env)).toThrow(ConfigError);
    expect(() => loadConfig(env)).toThrow(name);
  });

  test("the backoff doubles from the first delay and never passes the cap", () => {
    const waits = Array.from({ length: 12 }, (_, i) => retryDelayMs(i + 1, 1000, 60_000));
    expect(waits[0]).toBeGreaterThanOrEqual(900);
    expect(waits[0]).toBeLessThanOrEqual(1100);
    expect(waits[3]).toBeGreaterThanOrEqual(7200);
    for (const w of waits) expect(w).toBeLessThanOrEqual(60_000);
    expect(waits[11]).toBeGreaterThanOrEqual(54_000);
  });
});

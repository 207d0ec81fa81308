/** The service API's and webhooks' settings are parsed and checked at start. */
import { describe, expect, test } from "vitest";
import { ConfigError, loadConfig } from "../../server/src/config.js";

describe("service configuration", () => {
  test("is off by default, with a 60 s stream timeout", () => {
    const config = loadConfig({});
    expect(config.serviceApiKey).toBeUndefined();
    expect(config.webhookSigningSecret).toBeUndefined();
    expect(config.streamTimeoutMs).toBe(60_000);
  });

  test("takes a strong key, a Clerk signing secret and a timeout", () => {
    const key = "k".repeat(32);
    const config = loadConfig({
      SERVICE_API_KEY: key,
      CLERK_WEBHOOK_SIGNING_SECRET: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
      SERVICE_STREAM_TIMEOUT_MS: "15000",
    });
    expect(config.serviceApiKey).toBe(key);
    expect(config.webhookSigningSecret).toBe("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    expect(config.streamTimeoutMs).toBe(15_000);
    // Blank means unset.
    expect(loadConfig({ SERVICE_API_KEY: "  " }).serviceApiKey).toBeUndefined();
  });

  test.each([
    [{ SERVICE_API_KEY: "short" }, /SERVICE_API_KEY: must be at least 32 characters/],
    [{ SERVICE_API_KEY: `${"k".repeat(32)} x` }, /SERVICE_API_KEY: must not contain whitespace/],
    [{ SERVICE_STREAM_TIMEOUT_MS: "10" }, /SERVICE_STREAM_TIMEOUT_MS/],
    [{ CLERK_WEBHOOK_SIGNING_SECRET: "not a secret!" }, /CLERK_WEBHOOK_SIGNING_SECRET/],
  ])("refuses %o, naming the variable", (env, message) => {
    expect(() => loadConfig(env)).toThrow(ConfigError);
    expect(() => loadConfig(env)).toThrow(message);
  });
});

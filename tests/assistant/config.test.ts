/**
 * The assistant's configuration: what each variable gives, and that a bad value stops it with a
 * message naming the variable.
 */
import { describe, expect, test } from "vitest";
import { AssistantConfigError, loadAssistantConfig } from "../../assistant/config.js";

const base = {
  SERVICE_API_KEY: "k".repeat(40),
  APP_WEBHOOK_SECRET: `whsec_${Buffer.from("a secret of some length").toString("base64")}`,
};

describe("loadAssistantConfig", () => {
  test("defaults: the demo model, the local server, port 3100", () => {
    const c = loadAssistantConfig(base);
    expect(c).toMatchObject({
      host: "127.0.0.1",
      port: 3100,
      serviceUrl: "http://127.0.0.1:3000",
      historyLimit: 20,
      flushMs: 50,
      model: { kind: "demo", wordsPerSecond: 25 },
    });
    expect(c.systemPrompt.length).toBeGreaterThan(0);
  });

  test("an OpenAI-compatible model from OPENAI_BASE_URL / OPENAI_API_KEY / OPENAI_MODEL", () => {
    expect(
      loadAssistantConfig({
        ...base,
        OPENAI_BASE_URL: "http://127.0.0.1:11434/v1/",
        OPENAI_MODEL: "llama3.2",
      }).model,
    ).toEqual({
      kind: "openai",
      baseUrl: "http://127.0.0.1:11434/v1",
      apiKey: undefined,
      model: "llama3.2",
    });
    // A key alone means OpenAI itself.
    expect(
      loadAssistantConfig({ ...base, OPENAI_API_KEY: "sk-x", OPENAI_MODEL: "gpt-4o-mini" }).model,
    ).toEqual({
      kind: "openai",
      baseUrl: "https://api.openai.com/v1",
      apiKey: "sk-x",
      model: "gpt-4o-mini",
    });
  });

  test.each([
    [{ SERVICE_API_KEY: "" }, /SERVICE_API_KEY/],
    [{ APP_WEBHOOK_SECRET: undefined }, /APP_WEBHOOK_SECRET/],
    [{ APP_WEBHOOK_SECRET: "whsec_" }, /APP_WEBHOOK_SECRET/],
    [{ OPENAI_BASE_URL: "http://127.0.0.1:8000/v1" }, /OPENAI_MODEL/],
    [{ OPENAI_BASE_URL: "ftp://x", OPENAI_MODEL: "m" }, /OPENAI_BASE_URL/],
    [{ CHAT_SERVICE_URL: "not a url" }, /CHAT_SERVICE_URL/],
    [{ ASSISTANT_PORT: "70000" }, /ASSISTANT_PORT/],
    [{ ASSISTANT_HISTORY_LIMIT: "0" }, /ASSISTANT_HISTORY_LIMIT/],
    [{ ASSISTANT_FLUSH_MS: "fast" }, /ASSISTANT_FLUSH_MS/],
    [{ ASSISTANT_DEMO_WORDS_PER_SECOND: "0" }, /ASSISTANT_DEMO_WORDS_PER_SECOND/],
  ])("refuses %o, naming the variable", (env, variable) => {
    expect(() => loadAssistantConfig({ ...base, ...env })).toThrow(AssistantConfigError);
    expect(() => loadAssistantConfig({ ...base, ...env })).toThrow(variable);
  });
});

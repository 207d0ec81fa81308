/**
 * `npm start` in development, as a real process: it also runs the built-in assistant on a free
 * loopback port, with a generated webhook secret and (no SERVICE_API_KEY given) a generated
 * service key, so the demo's loop needs no configuration. Not when APP_WEBHOOK_URL names the
 * app's own backend.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, test } from "vitest";
import { createTestDatabase } from "../helpers/db.js";
import { eventually } from "../helpers/server.js";

const cleanups: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
});

/** Starts `npm start`'s entry with `env`; resolves once the server listens. */
async function start(env: Record<string, string>) {
  const tdb = await createTestDatabase();
  const dataDir = await mkdtemp(path.join(tmpdir(), "chat-dev-assistant-"));
  cleanups.push(
    () => tdb.drop(),
    () => rm(dataDir, { recursive: true, force: true }),
  );
  // Nothing of the caller's configuration: as on a fresh machine.
  const inherited = { ...process.env };
  for (const name of Object.keys(inherited)) {
    if (/^(OPENAI_|ASSISTANT_|APP_WEBHOOK_|SERVICE_API_KEY$)/.test(name)) delete inherited[name];
  }
  const child: ChildProcess = spawn(process.execPath, ["--import", "tsx", "server/src/main.ts"], {
    env: {
      ...inherited,
      NODE_ENV: "development",
      DATABASE_URL: tdb.url,
      PORT: "0",
      DATA_DIR: dataDir,
      LOG_LEVEL: "info",
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  cleanups.push(async () => {
    if (child.exitCode === null) child.kill("SIGKILL");
  });
  const log = { text: "" };
  child.stdout?.on("data", (d) => {
    log.text += d;
  });
  child.stderr?.on("data", (d) => {
    log.text += d;
  });
  const port = await eventually(() => {
    const m = /"port":(\d+)/.exec(log.text);
    if (!m) throw new Error(`server not listening yet:\n${log.text}`);
    return Number(m[1]);
  }, 30_000);
  return { child, log, url: `http://127.0.0.1:${port}` };
}

function exit(child: ChildProcess): Promise<number | null> {
  return new Promise((resolve) => {
    if (child.exitCode !== null) resolve(child.exitCode);
    else child.once("exit", (code) => resolve(code));
  });
}

describe("npm start in development", () => {
  test("runs the assistant with the demo model and wires it, with no configuration", async () => {
    const { child, log, url } = await start({});
    const line = await eventually(() => {
      const found = log.text.split("\n").find((l) => l.includes('"development assistant'));
      if (!found) throw new Error(`no assistant yet:\n${log.text}`);
      return JSON.parse(found) as { webhookUrl: string; model: string; app: string };
    }, 10_000);
    expect(line.app).toBe("assistant");
    expect(line.model).toBe("demo");
    expect(line.webhookUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/webhooks$/);

    // The assistant is up and verifies signatures (with the secret the server was given).
    const health = await fetch(new URL("/healthz", line.webhookUrl));
    expect(health.status).toBe(200);
    const unsigned = await fetch(line.webhookUrl, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ type: "message.created", data: {} }),
    });
    expect(unsigned.status).toBe(401);
    // The service API is on, with a generated key (without one it would answer 404).
    const service = await fetch(`${url}/service/v1/users/user_x/stats`);
    expect(service.status).toBe(401);
    // The key and the secret are never logged.
    expect(log.text).not.toMatch(/whsec_|serviceApiKey/);

    // SIGTERM stops both promptly.
    child.kill("SIGTERM");
    expect(await exit(child)).toBe(0);
  });

  test("not when APP_WEBHOOK_URL names the app's own backend", async () => {
    const { child, log, url } = await start({ APP_WEBHOOK_URL: "http://127.0.0.1:9/hooks" });
    // Readiness first, so the absence of the assistant's line below means something.
    await eventually(async () => expect((await fetch(`${url}/readyz`)).status).toBe(200));
    expect(log.text).not.toContain("development assistant");
    // No service key configured and none generated: the service API stays off.
    expect((await fetch(`${url}/service/v1/users/user_x/stats`)).status).toBe(404);
    child.kill("SIGTERM");
    expect(await exit(child)).toBe(0);
  });
});

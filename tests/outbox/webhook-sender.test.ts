/**
 * The webhook client itself (services/webhook-sender.ts), against real HTTP servers on
 * loopback: its signature is byte for byte the one `standardwebhooks` makes (it signs with
 * Node's native HMAC), a receiver verifies it with the package, credentials in the URL go as
 * Basic auth, connections are kept alive and reused, and a failed answer is described from at
 * most its first bytes.
 */
import { randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { Webhook } from "standardwebhooks";
import { afterEach, describe, expect, it } from "vitest";
import { WebhookSender, WebhookSigner } from "../../server/src/services/webhook-sender.js";
import { newSecret } from "./support.js";

type Handler = (
  req: IncomingMessage,
  body: string,
  res: import("node:http").ServerResponse,
) => void;

describe("webhook sender", () => {
  const cleanups: (() => unknown)[] = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  async function serve(handler: Handler): Promise<{ url: string; server: Server }> {
    const server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => handler(req, Buffer.concat(chunks).toString("utf8"), res));
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    cleanups.push(
      () =>
        new Promise<void>((r) => {
          server.closeAllConnections();
          server.close(() => r());
        }),
    );
    return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hooks`, server };
  }

  function sender(url: string, secret: string, timeoutMs = 2000) {
    const s = new WebhookSender({ url, secret, timeoutMs, maxSockets: 4 });
    cleanups.push(() => s.close());
    return s;
  }

  it("signs exactly as standardwebhooks does, for any secret, id and body", () => {
    for (let i = 0; i < 200; i++) {
      const secret = `whsec_${randomBytes(8 + (i % 40)).toString("base64")}`;
      const id = `evt_${randomBytes(16).toString("hex")}`;
      const seconds = 1_700_000_000 + i * 7919;
      const body = JSON.stringify({
        type: "message.created",
        data: { content: `héllo ✓ ${randomBytes(i).toString("base64")} "quoted" \u2028 😀` },
      });
      expect(new WebhookSigner(secret).sign(id, seconds, body)).toBe(
        new Webhook(secret).sign(id, new Date(seconds * 1000), body),
      );
    }
    // A malformed secret is refused, as by the package.
    expect(() => new WebhookSigner("whsec_")).toThrow();
  });

  it("delivers verifiable requests over kept-alive connections; URL credentials go as Basic auth", async () => {
    const secret = newSecret();
    const verifier = new Webhook(secret);
    const seen: { auth?: string; port?: number; type: string }[] = [];
    const { url } = await serve((req, body, res) => {
      const event = verifier.verify(body, req.headers as Record<string, string>) as {
        type: string;
      };
      seen.push({ auth: req.headers.authorization, port: req.socket.remotePort, type: event.type });
      expect(req.headers["content-type"]).toBe("application/json");
      expect(req.headers["user-agent"]).toBe("chat-backend-webhooks");
      res.writeHead(204).end();
    });
    const withAuth = url.replace("http://", "http://app%20user:p%40ss@");
    const s = sender(withAuth, secret);
    for (let i = 0; i < 5; i++) {
      const result = await s.send(`evt_${i}`, {
        type: `t${i}`,
        timestamp: new Date().toISOString(),
        data: { i },
      });
      expect(result).toEqual({ ok: true, status: 204 });
    }
    expect(seen.map((x) => x.type)).toEqual(["t0", "t1", "t2", "t3", "t4"]);
    expect(seen[0]?.auth).toBe(`Basic ${Buffer.from("app user:p@ss").toString("base64")}`);
    // One request at a time, on kept-alive connections: they are reused.
    expect(new Set(seen.map((x) => x.port)).size).toBeLessThan(seen.length);
  });

  it("describes a failed answer from its first bytes; a redirect is not followed; a hang times out", async () => {
    const secret = newSecret();
    const { url } = await serve((req, _body, res) => {
      const id = String(req.headers["webhook-id"]);
      if (id === "big") res.writeHead(500).end(`${"x".repeat(100)} ${"y".repeat(100_000)}`);
      else if (id === "moved") res.writeHead(307, { location: "/elsewhere" }).end();
      // "hang": never answered.
    });
    const s = sender(url, secret, 300);
    const body = { type: "t", timestamp: new Date().toISOString(), data: {} };
    const big = await s.send("big", body);
    expect(big.ok).toBe(false);
    if (!big.ok) {
      expect(big.error).toMatch(/^HTTP 500: x{100} y+$/);
      expect(big.error.length).toBeLessThanOrEqual(220);
    }
    expect(await s.send("moved", body)).toEqual({
      ok: false,
      error: "HTTP 307 (redirects are not followed)",
    });
    const started = Date.now();
    expect(await s.send("hang", body)).toEqual({ ok: false, error: "timeout after 300 ms" });
    expect(Date.now() - started).toBeLessThan(2000);
    // An abort from the delivery (its lease ran short) ends an attempt at once.
    const controller = new AbortController();
    const pending = s.send("hang", body, controller.signal);
    setTimeout(() => controller.abort(), 50);
    expect(await pending).toEqual({
      ok: false,
      error: "aborted (node shutting down or its lease ran short)",
    });
  });
});

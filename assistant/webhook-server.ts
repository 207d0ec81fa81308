/**
 * The assistant's HTTP endpoint: `POST /webhooks` receives the chat server's events, signed with
 * the Standard Webhooks scheme (headers `webhook-id`, `webhook-timestamp`, `webhook-signature`).
 *
 * - A bad or missing signature, or a timestamp more than five minutes off, is `401`.
 * - A verified event is answered at once (`202` queued, `200` otherwise) and worked on in the
 *   background: the server's delivery has a timeout, and a model reply takes seconds.
 * - Deliveries are at least once: a `webhook-id` seen recently is answered `200` and not acted on
 *   again (the reply's stream id covers redeliveries after a restart, see assistant.ts).
 * - Until the assistant is attached (`setAssistant`) events are answered `503`, so the server
 *   retries them later.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { Webhook, WebhookVerificationError } from "standardwebhooks";
import type { Assistant, Logger, WebhookEvent } from "./assistant.js";

/** Largest body accepted; the server's events are a few kilobytes (a message is ≤ 64k characters). */
const MAX_BODY_BYTES = 1024 * 1024;
/** Webhook ids remembered for de-duplication (the oldest are forgotten first). */
const REMEMBERED_IDS = 10_000;

/** The last `capacity` ids seen, in a Map used as an insertion-ordered set. */
export class RecentIds {
  private readonly ids = new Map<string, true>();
  constructor(private readonly capacity = REMEMBERED_IDS) {}

  /** Whether `id` was seen before; remembers it otherwise. */
  seen(id: string): boolean {
    if (this.ids.has(id)) return true;
    this.ids.set(id, true);
    if (this.ids.size > this.capacity) {
      const oldest = this.ids.keys().next().value;
      if (oldest !== undefined) this.ids.delete(oldest);
    }
    return false;
  }

  get size(): number {
    return this.ids.size;
  }
}

function send(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(text),
  });
  res.end(text);
}

async function readBody(req: IncomingMessage): Promise<string | undefined> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY_BYTES) return undefined;
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks).toString("utf8");
}

function header(req: IncomingMessage, name: string): string {
  const value = req.headers[name];
  return typeof value === "string" ? value : "";
}

export interface WebhookServerOptions {
  /** `APP_WEBHOOK_SECRET` (`whsec_…`). */
  secret: string;
  logger: Logger;
  /** The assistant events go to; settable later with `setAssistant`. */
  assistant?: Assistant | undefined;
}

export class WebhookServer {
  readonly http: Server;
  private readonly webhook: Webhook;
  private readonly recent = new RecentIds();
  private assistant: Assistant | undefined;

  constructor(private readonly options: WebhookServerOptions) {
    this.webhook = new Webhook(options.secret);
    this.assistant = options.assistant;
    this.http = createServer((req, res) => {
      this.serve(req, res).catch((err: unknown) => {
        options.logger.error({ err: String(err) }, "webhook request failed");
        if (!res.headersSent) send(res, 500, { error: "internal error" });
        else res.destroy();
      });
    });
  }

  setAssistant(assistant: Assistant): void {
    this.assistant = assistant;
  }

  /** Listens; resolves with the URL to configure as the server's `APP_WEBHOOK_URL`. */
  async listen(port: number, host: string): Promise<string> {
    await new Promise<void>((resolve, reject) => {
      this.http.once("error", reject);
      this.http.listen(port, host, () => {
        this.http.off("error", reject);
        resolve();
      });
    });
    const address = this.http.address() as AddressInfo;
    const shown = address.family === "IPv6" ? `[${address.address}]` : address.address;
    return `http://${shown}:${address.port}/webhooks`;
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => {
      this.http.close(() => resolve());
      this.http.closeIdleConnections();
    });
  }

  private async serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = new URL(req.url ?? "/", "http://localhost").pathname;
    if (req.method === "GET" && path === "/healthz") return send(res, 200, { ok: true });
    if (path !== "/webhooks") return send(res, 404, { error: "not found" });
    if (req.method !== "POST") return send(res, 405, { error: "use POST" });

    const body = await readBody(req);
    if (body === undefined) {
      res.setHeader("connection", "close");
      return send(res, 413, { error: "body too large" });
    }
    const id = header(req, "webhook-id");
    try {
      // Verifies the signature over the exact bytes received, and the timestamp's freshness.
      this.webhook.verify(
        body,
        {
          "webhook-id": id,
          "webhook-timestamp": header(req, "webhook-timestamp"),
          "webhook-signature": header(req, "webhook-signature"),
        },
        { jsonParse: false },
      );
    } catch (err) {
      if (err instanceof WebhookVerificationError) {
        return send(res, 401, { error: "invalid signature" });
      }
      throw err;
    }
    let event: WebhookEvent;
    try {
      event = JSON.parse(body) as WebhookEvent;
    } catch {
      return send(res, 400, { error: "the body is not JSON" });
    }
    if (typeof event !== "object" || event === null) {
      return send(res, 400, { error: "the body is not an event" });
    }
    const assistant = this.assistant;
    if (!assistant) return send(res, 503, { error: "not ready" });
    if (this.recent.seen(id)) return send(res, 200, { received: true, duplicate: true });

    const handled = assistant.handle(event);
    this.options.logger.debug({ webhookId: id, type: event.type, handled }, "webhook");
    return send(res, handled === "queued" ? 202 : 200, { received: true, handled });
  }
}

/**
 * One webhook POST to the app's backend, signed with the Standard Webhooks scheme (the scheme
 * Clerk's webhooks use). Only a 2xx counts as delivered: a redirect is not followed (3xx is a
 * failure: the operator configured the URL, a redirect means it is wrong), the whole request is
 * bounded by a timeout, and at most a little of the answer is read (for the failure's
 * description), so a slow, huge or garbage answer costs nothing more.
 */
import { createHmac } from "node:crypto";
import { Webhook } from "standardwebhooks";
import { Pool } from "undici";

/** The webhook's body. */
export interface WebhookBody {
  type: string;
  /** ISO 8601: when the event was stored. */
  timestamp: string;
  data: unknown;
}

/** What one attempt came to. `error` describes a failure in a line, for the failed list. */
export type SendResult = { ok: true; status: number } | { ok: false; error: string };

/** Bytes of a failed answer kept for its description. */
const MAX_ERROR_BODY_BYTES = 512;

export interface WebhookSenderOptions {
  url: string;
  /** `whsec_…`. */
  secret: string;
  timeoutMs: number;
  /** Requests at once (the delivery's concurrency): kept-alive connections to the receiver. */
  maxSockets?: number;
}

/**
 * The `webhook-signature` of Standard Webhooks: `v1,` + base64 HMAC-SHA256 of
 * `id.timestamp.body` under the secret's key (`whsec_` + base64). The same bytes as
 * `standardwebhooks`' `Webhook.sign` (tests/outbox/webhook-sender.test.ts compares them), with
 * Node's native HMAC instead of the package's JavaScript SHA-256 (a few times cheaper per event,
 * docs/benchmarks.md); the package still checks the secret.
 */
export class WebhookSigner {
  private readonly key: Buffer;

  constructor(secret: string) {
    // Throws on an empty or malformed secret, as the package does.
    new Webhook(secret);
    this.key = Buffer.from(secret.startsWith("whsec_") ? secret.slice(6) : secret, "base64");
  }

  sign(id: string, timestampSeconds: number, payload: string): string {
    const mac = createHmac("sha256", this.key).update(`${id}.${timestampSeconds}.${payload}`);
    return `v1,${mac.digest("base64")}`;
  }
}

/**
 * undici's connection pool (the HTTP/1.1 client Node's own `fetch` is built on), without the
 * WHATWG streams of `fetch`: the delivery makes one request per event, and undici's plain
 * `request` costs less CPU per request than `node:http` (docs/benchmarks.md). Connections to the
 * receiver are kept open and reused, one request at a time on each (no pipelining).
 */
export class WebhookSender {
  private readonly signer: WebhookSigner;
  private readonly pool: Pool;
  private readonly path: string;
  private readonly authorization: string | undefined;

  constructor(private readonly options: WebhookSenderOptions) {
    this.signer = new WebhookSigner(options.secret);
    const url = new URL(options.url);
    this.path = `${url.pathname}${url.search}`;
    // Credentials in the URL go as Basic auth (as node:http did).
    this.authorization =
      url.username || url.password
        ? `Basic ${Buffer.from(`${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`).toString("base64")}`
        : undefined;
    this.pool = new Pool(url.origin, {
      connections: options.maxSockets ?? 16,
      pipelining: 1,
      // Below common servers' keep-alive timeouts (Node's 5 s), so that a reused connection is
      // rarely one the receiver is closing; a server's `Keep-Alive: timeout=` hint, less a
      // second, shortens it further. (A connection closed under a request anyway is a failed
      // attempt like any reset, retried after the backoff.)
      keepAliveTimeout: 4000,
      // The attempt's own timer (below) bounds it as a whole; these only back it up.
      connectTimeout: options.timeoutMs,
      headersTimeout: options.timeoutMs,
      bodyTimeout: options.timeoutMs,
    });
  }

  /**
   * POSTs `body` with `webhook-id: id` (the same on every retry). `signal` aborts it (shutdown, or
   * this node's lease on the chat ran short). Never throws.
   */
  async send(id: string, body: WebhookBody, signal?: AbortSignal): Promise<SendResult> {
    const payload = JSON.stringify(body);
    const aborted = "aborted (node shutting down or its lease ran short)";
    if (signal?.aborted) return { ok: false, error: aborted };
    const { timeoutMs } = this.options;
    const timestamp = Math.floor(Date.now() / 1000);
    const headers: Record<string, string> = {
      "content-type": "application/json",
      "user-agent": "chat-backend-webhooks",
      "webhook-id": id,
      "webhook-timestamp": String(timestamp),
      "webhook-signature": this.signer.sign(id, timestamp, payload),
    };
    if (this.authorization) headers.authorization = this.authorization;
    // The whole attempt, connect to answer, is bounded; the chat's signal aborts it too.
    const controller = new AbortController();
    let why: string | undefined;
    const timer = setTimeout(() => {
      why = `timeout after ${timeoutMs} ms`;
      controller.abort();
    }, timeoutMs);
    const onAbort = () => {
      why ??= aborted;
      controller.abort();
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      const res = await this.pool.request({
        path: this.path,
        method: "POST",
        headers,
        body: payload,
        signal: controller.signal,
      });
      const status = res.statusCode;
      if (status >= 200 && status < 300) {
        // Read to its end, not kept: the answer does not matter, and the connection goes back
        // to the pool (a large answer is cut off instead, and that connection closed).
        await res.body.dump().catch(() => {});
        return { ok: true, status };
      }
      const where = status >= 300 && status < 400 ? " (redirects are not followed)" : "";
      const snippet = await readSome(res.body, MAX_ERROR_BODY_BYTES);
      return { ok: false, error: `HTTP ${status}${where}${snippet ? `: ${snippet}` : ""}` };
    } catch (err) {
      return { ok: false, error: why ?? describe(err) };
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
    }
  }

  /** Closes the kept-alive connections (requests in progress are aborted). */
  close(): void {
    void this.pool.destroy().catch(() => {});
  }
}

/** Up to `max` bytes of the answer as one line of text; the rest is not read. */
async function readSome(body: AsyncIterable<Buffer> & { destroy(): unknown }, max: number) {
  const chunks: Buffer[] = [];
  let size = 0;
  try {
    for await (const c of body) {
      chunks.push(c);
      size += c.byteLength;
      // Enough: the rest is not read (this connection is not reused).
      if (size >= max) break;
    }
  } catch {
    // A broken answer: what was read is enough.
  }
  body.destroy();
  const text = Buffer.concat(chunks).subarray(0, max).toString("utf8");
  return text.replace(/\s+/g, " ").trim().slice(0, 200);
}

/** The client's errors name their cause (ECONNREFUSED, a parse error) in `code`. */
function describe(err: unknown): string {
  const e = err as { message?: string; code?: string; cause?: unknown };
  const code = e.code && !(e.message ?? "").includes(e.code) ? ` (${e.code})` : "";
  return `${e.message ?? String(err)}${code}`.slice(0, 300);
}

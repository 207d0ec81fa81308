/**
 * One webhook POST to the app's backend, signed with the Standard Webhooks scheme (the scheme
 * Clerk's webhooks use; byte for byte what the `standardwebhooks` package signs). Only a 2xx counts as delivered:
 * a redirect is not followed (3xx is a failure: the operator configured the URL, a redirect means
 * it is wrong), the whole request is bounded by a timeout, and at most a little of the answer is
 * read (for the failure's description), so a slow, huge or garbage answer costs nothing more.
 */
import { createHmac } from "node:crypto";
import { Agent as HttpAgent, request as httpRequest, type IncomingMessage } from "node:http";
import { Agent as HttpsAgent, request as httpsRequest } from "node:https";
import { Webhook } from "standardwebhooks";

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
 * Node's native HMAC instead of the package's JavaScript SHA-256 (`fast-sha256`, 3–6 % of the
 * node's CPU in a saturated profile, docs/benchmarks.md); the package still checks the secret.
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
 * Node's own HTTP client with a keep-alive agent, not `fetch`: the delivery makes one request
 * per event, and fetch's WHATWG streams cost several times the CPU of a plain request on this
 * path (docs/benchmarks.md). undici's Pool (what fetch is built on, without the streams)
 * measured no cheaper here: 139 vs 139 µs of CPU per delivered event, delivery alone
 * (scripts/bench/webhook-drain.ts). Connections to the receiver are kept open and reused, and
 * the target is parsed once, not from the URL on every request.
 */
export class WebhookSender {
  private readonly signer: WebhookSigner;
  /** The request's target, parsed once (not from the URL on every request). */
  private readonly target: {
    protocol: string;
    hostname: string;
    port: number | undefined;
    path: string;
    auth: string | undefined;
  };
  private readonly agent: HttpAgent;
  private readonly request: typeof httpRequest;

  constructor(private readonly options: WebhookSenderOptions) {
    this.signer = new WebhookSigner(options.secret);
    const url = new URL(options.url);
    const https = url.protocol === "https:";
    this.target = {
      protocol: url.protocol,
      // An IPv6 literal without its brackets, as node:http wants it.
      hostname: url.hostname.replace(/^\[(.*)\]$/, "$1"),
      port: url.port ? Number(url.port) : undefined,
      path: `${url.pathname}${url.search}`,
      // Credentials in the URL go as Basic auth, as when node:http is given the URL itself.
      auth:
        url.username || url.password
          ? `${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`
          : undefined,
    };
    const agentOptions = {
      keepAlive: true,
      maxSockets: options.maxSockets ?? 16,
      maxFreeSockets: options.maxSockets ?? 16,
      // Below common servers' keep-alive timeouts (Node's 5 s), so that a reused socket is
      // rarely one the receiver is closing.
      freeSocketTimeout: 4000,
    };
    this.agent = https ? new HttpsAgent(agentOptions) : new HttpAgent(agentOptions);
    this.request = https ? (httpsRequest as typeof httpRequest) : httpRequest;
  }

  /**
   * POSTs `body` with `webhook-id: id` (the same on every retry). `signal` aborts it (shutdown, or
   * this node's lease on the chat ran short). Never throws.
   */
  send(id: string, body: WebhookBody, signal?: AbortSignal): Promise<SendResult> {
    return this.attempt(id, JSON.stringify(body), signal, true);
  }

  private attempt(
    id: string,
    payload: string,
    signal: AbortSignal | undefined,
    mayRetryReused: boolean,
  ): Promise<SendResult> {
    const seconds = Math.floor(Date.now() / 1000);
    const { timeoutMs } = this.options;
    return new Promise<SendResult>((resolve) => {
      let settled = false;
      const finish = (result: SendResult) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        resolve(result);
      };
      const req = this.request({
        ...this.target,
        method: "POST",
        agent: this.agent,
        headers: {
          "content-type": "application/json",
          "content-length": Buffer.byteLength(payload),
          "user-agent": "chat-backend-webhooks",
          "webhook-id": id,
          "webhook-timestamp": String(seconds),
          "webhook-signature": this.signer.sign(id, seconds, payload),
        },
      });
      // The whole attempt, connect to answer, is bounded.
      const timer = setTimeout(() => {
        finish({ ok: false, error: `timeout after ${timeoutMs} ms` });
        req.destroy();
      }, timeoutMs);
      const onAbort = () => {
        finish({ ok: false, error: "aborted (node shutting down or its lease ran short)" });
        req.destroy();
      };
      if (signal?.aborted) return onAbort();
      signal?.addEventListener("abort", onAbort, { once: true });
      req.on("error", (err: NodeJS.ErrnoException) => {
        if (!settled && mayRetryReused && req.reusedSocket && err.code === "ECONNRESET") {
          // A kept-alive connection the receiver closed just as it was reused: the request never
          // reached it. Once more on a fresh connection (Node's documented pattern).
          settled = true;
          clearTimeout(timer);
          signal?.removeEventListener("abort", onAbort);
          resolve(this.attempt(id, payload, signal, false));
          return;
        }
        finish({ ok: false, error: describe(err) });
      });
      req.on("response", (res: IncomingMessage) => {
        const status = res.statusCode ?? 0;
        if (status >= 200 && status < 300) {
          // Drained, not read: the answer does not matter, and the socket goes back to the pool
          // once the answer ends.
          res.resume();
          res.on("end", () => finish({ ok: true, status }));
          res.on("error", () => finish({ ok: true, status }));
          return;
        }
        const where = status >= 300 && status < 400 ? " (redirects are not followed)" : "";
        void readSome(res, MAX_ERROR_BODY_BYTES).then((snippet) =>
          finish({ ok: false, error: `HTTP ${status}${where}${snippet ? `: ${snippet}` : ""}` }),
        );
      });
      req.end(payload);
    });
  }

  /** Closes the kept-alive connections. */
  close(): void {
    this.agent.destroy();
  }
}

/** Up to `max` bytes of the answer as one line of text; the rest is not read. */
function readSome(res: IncomingMessage, max: number): Promise<string> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const done = () => {
      const text = Buffer.concat(chunks).subarray(0, max).toString("utf8");
      resolve(text.replace(/\s+/g, " ").trim().slice(0, 200));
    };
    res.on("data", (c: Buffer) => {
      chunks.push(c);
      size += c.byteLength;
      if (size >= max) {
        // Enough: the rest is not read, and this socket is not reused.
        res.destroy();
        done();
      }
    });
    res.on("end", done);
    // A broken answer: what was read is enough.
    res.on("error", done);
    res.on("close", done);
  });
}

/** The client's errors name their cause (ECONNREFUSED, a parse error) in `code`. */
function describe(err: unknown): string {
  const e = err as { message?: string; code?: string };
  const code = e.code && !(e.message ?? "").includes(e.code) ? ` (${e.code})` : "";
  return `${e.message ?? String(err)}${code}`.slice(0, 300);
}

/**
 * One webhook POST to the app's backend, signed with the Standard Webhooks scheme (the
 * `standardwebhooks` package; the scheme Clerk's webhooks use). Only a 2xx counts as delivered:
 * a redirect is not followed (3xx is a failure: the operator configured the URL, a redirect means
 * it is wrong), the whole request is bounded by a timeout, and at most a little of the answer is
 * read (for the failure's description), so a slow, huge or garbage answer costs nothing more.
 */
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
}

export class WebhookSender {
  private readonly webhook: Webhook;

  constructor(private readonly options: WebhookSenderOptions) {
    this.webhook = new Webhook(options.secret);
  }

  /**
   * POSTs `body` with `webhook-id: id` (the same on every retry). `signal` aborts it (shutdown, or
   * this node lost its heartbeat). Never throws.
   */
  async send(id: string, body: WebhookBody, signal?: AbortSignal): Promise<SendResult> {
    const payload = JSON.stringify(body);
    const now = new Date();
    const timeout = AbortSignal.timeout(this.options.timeoutMs);
    const abort = signal ? AbortSignal.any([timeout, signal]) : timeout;
    try {
      const res = await fetch(this.options.url, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          "user-agent": "chat-backend-webhooks",
          "webhook-id": id,
          "webhook-timestamp": String(Math.floor(now.getTime() / 1000)),
          "webhook-signature": this.webhook.sign(id, now, payload),
        },
        body: payload,
        redirect: "manual",
        signal: abort,
      });
      if (res.status >= 200 && res.status < 300) {
        // Not read: the answer does not matter, and the connection is reused once it is drained
        // or cancelled.
        await res.body?.cancel().catch(() => {});
        return { ok: true, status: res.status };
      }
      const snippet = await readSome(res, MAX_ERROR_BODY_BYTES);
      const where = res.status >= 300 && res.status < 400 ? " (redirects are not followed)" : "";
      return {
        ok: false,
        error: `HTTP ${res.status}${where}${snippet ? `: ${snippet}` : ""}`,
      };
    } catch (err) {
      if (timeout.aborted)
        return { ok: false, error: `timeout after ${this.options.timeoutMs} ms` };
      if (signal?.aborted) return { ok: false, error: "aborted (node shutting down or cut off)" };
      return { ok: false, error: describe(err) };
    }
  }
}

/** Up to `max` bytes of the answer as one line of text; the rest is not read. */
async function readSome(res: Response, max: number): Promise<string> {
  const reader = res.body?.getReader();
  if (!reader) return "";
  const chunks: Uint8Array[] = [];
  let size = 0;
  try {
    while (size < max) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
      size += value.byteLength;
    }
  } catch {
    // A broken answer: what was read is enough.
  } finally {
    await reader.cancel().catch(() => {});
  }
  const text = Buffer.concat(chunks).subarray(0, max).toString("utf8");
  return text.replace(/\s+/g, " ").trim().slice(0, 200);
}

/** fetch's errors hide the cause (ECONNREFUSED, a parse error) one level down. */
function describe(err: unknown): string {
  const e = err as { message?: string; cause?: { code?: string; message?: string } };
  const cause = e.cause?.code ?? e.cause?.message;
  return `${e.message ?? String(err)}${cause ? ` (${cause})` : ""}`.slice(0, 300);
}

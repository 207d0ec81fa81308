/**
 * JSON over HTTP for the service API and the webhooks: bodies read with a size limit, errors as
 * `{ error: { code, message, details? } }` with the protocol's closed set of codes and a
 * matching status. Nothing internal (SQL, stacks) is ever sent.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { ErrorCode, type ProtocolError } from "../../../protocol/index.js";
import type { Logger } from "../logger.js";
import { toProtocolError } from "../socket/command.js";
import { sendJson } from "./routes.js";

/** The HTTP status of each error code. */
export const statusOf: Record<ErrorCode, number> = {
  [ErrorCode.UNAUTHORIZED]: 401,
  [ErrorCode.TOKEN_EXPIRED]: 401,
  [ErrorCode.FORBIDDEN]: 403,
  [ErrorCode.NOT_FOUND]: 404,
  [ErrorCode.INVALID_PAYLOAD]: 400,
  [ErrorCode.UNKNOWN_COMMAND]: 404,
  [ErrorCode.RATE_LIMITED]: 429,
  [ErrorCode.CONFLICT]: 409,
  [ErrorCode.UNAVAILABLE]: 503,
  [ErrorCode.INTERNAL]: 500,
  [ErrorCode.STREAM_STOPPED]: 409,
};

export function sendError(
  res: ServerResponse,
  error: ProtocolError,
  status = statusOf[error.code],
): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  if (error.code === ErrorCode.UNAUTHORIZED) res.setHeader("www-authenticate", "Bearer");
  if (error.retryAfterMs !== undefined) {
    res.setHeader("retry-after", String(Math.max(1, Math.ceil(error.retryAfterMs / 1000))));
  }
  sendJson(res, status, { error });
}

/** Maps anything thrown while serving a request to an error response (and logs the unexpected). */
export function sendFailure(
  res: ServerResponse,
  err: unknown,
  context: Record<string, unknown>,
  logger: Logger,
): void {
  sendError(res, toProtocolError(err, context, logger));
}

export const payloadTooLarge = (maxBytes: number): ProtocolError => ({
  code: ErrorCode.INVALID_PAYLOAD,
  message: `The body is larger than ${maxBytes} bytes`,
});

export type BodyResult =
  | { ok: true; text: string }
  | { ok: false; tooLarge: true }
  | { ok: false; timedOut: true };

/**
 * Milliseconds a request body to the service API or the webhooks may take to arrive, by
 * default. Real callers send a few kilobytes at once; without a bound a stalled body held its
 * connection and buffer for Node's `requestTimeout` (300 s), unauthenticated on the webhook.
 */
export const DEFAULT_BODY_TIMEOUT_MS = 10_000;

/**
 * Reads a request body of at most `maxBytes` within `timeoutMs`. A larger body is read on and
 * discarded (up to four times the limit, so that the client gets its 413 on a healthy
 * connection); past that, or when Content-Length already says so, the connection is closed
 * after the answer. A body not complete within `timeoutMs` is `timedOut`: the caller answers
 * (sendBodyFailure: 408) and the connection is closed after that answer.
 */
export function readBody(
  req: IncomingMessage,
  res: ServerResponse,
  maxBytes: number,
  timeoutMs = DEFAULT_BODY_TIMEOUT_MS,
): Promise<BodyResult> {
  const hardLimit = maxBytes * 4;
  const declared = Number(req.headers["content-length"] ?? Number.NaN);
  if (Number.isFinite(declared) && declared > hardLimit) {
    res.setHeader("connection", "close");
    return Promise.resolve({ ok: false, tooLarge: true });
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const finish = (result: BodyResult | Error) => {
      clearTimeout(timer);
      req.off("data", onData).off("end", onEnd).off("error", onError);
      if (result instanceof Error) return reject(result);
      if (!result.ok && (size > hardLimit || "timedOut" in result)) {
        // Stop reading, and drop the connection once the answer is out: what is left of the
        // body would otherwise be read as the next request.
        req.pause();
        res.setHeader("connection", "close");
        res.once("finish", () => req.socket.destroy());
      }
      resolve(result);
    };
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > hardLimit) return finish({ ok: false, tooLarge: true });
      if (size <= maxBytes) chunks.push(chunk);
    };
    const onEnd = () =>
      finish(
        size > maxBytes
          ? { ok: false, tooLarge: true }
          : { ok: true, text: Buffer.concat(chunks).toString("utf8") },
      );
    const onError = (err: Error) => finish(err);
    const timer = setTimeout(() => finish({ ok: false, timedOut: true }), timeoutMs);
    req.on("data", onData).on("end", onEnd).on("error", onError);
  });
}

/** Answers a body readBody refused: 413 when too large, 408 when it did not arrive in time. */
export function sendBodyFailure(
  res: ServerResponse,
  read: Exclude<BodyResult, { ok: true }>,
  maxBytes: number,
  timeoutMs = DEFAULT_BODY_TIMEOUT_MS,
): void {
  if ("timedOut" in read) {
    sendError(
      res,
      {
        code: ErrorCode.INVALID_PAYLOAD,
        message: `The request body did not arrive within ${timeoutMs / 1000} s`,
      },
      408,
    );
    return;
  }
  sendError(res, payloadTooLarge(maxBytes), 413);
}

/** Parses JSON text; an empty body is `{}`. */
export function parseJson(text: string): { ok: true; value: unknown } | { ok: false } {
  if (text.trim() === "") return { ok: true, value: {} };
  try {
    return { ok: true, value: JSON.parse(text) };
  } catch {
    return { ok: false };
  }
}

export const invalidJson: ProtocolError = {
  code: ErrorCode.INVALID_PAYLOAD,
  message: "The body is not valid JSON",
};

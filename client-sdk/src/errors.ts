import type { CommandName, ErrorCode, ProtocolError } from "@chat-backend/protocol";
import { retryableErrorCodes } from "@chat-backend/protocol";

/** Codes the SDK itself produces, beside the server's `ErrorCode`s. */
export const ClientErrorCode = {
  /** No ack within the command timeout (the socket may be offline). Retryable. */
  TIMEOUT: "TIMEOUT",
  /** The connection dropped before the ack arrived; the command may or may not have run. Retryable. */
  DISCONNECTED: "DISCONNECTED",
  /** The client is signed out (getToken returned null, or the server refused the token). */
  SIGNED_OUT: "SIGNED_OUT",
  /** `close()` was called. */
  CLOSED: "CLOSED",
  /** The app discarded the pending message (`outbox.discard`). */
  CANCELLED: "CANCELLED",
} as const;

export type ClientErrorCode = (typeof ClientErrorCode)[keyof typeof ClientErrorCode];

/** Every code a `ChatClientError` can carry. */
export type ChatErrorCode = ErrorCode | ClientErrorCode;

const retryableClientCodes: ReadonlySet<string> = new Set([
  ClientErrorCode.TIMEOUT,
  ClientErrorCode.DISCONNECTED,
]);

/** Whether a request that failed with `code` may be sent again unchanged. */
export function isRetryable(code: ChatErrorCode): boolean {
  return retryableErrorCodes.has(code as ErrorCode) || retryableClientCodes.has(code);
}

export interface ChatClientErrorOptions {
  details?: ProtocolError["details"] | undefined;
  retryAfterMs?: number | undefined;
  command?: CommandName | undefined;
  cause?: unknown;
}

/** The one error type the SDK rejects with. */
export class ChatClientError extends Error {
  override readonly name = "ChatClientError";
  readonly code: ChatErrorCode;
  /** Whether the same request may be sent again (with the same client id). */
  readonly retryable: boolean;
  /** For INVALID_PAYLOAD: the problems, by path. */
  readonly details: ProtocolError["details"] | undefined;
  /** For RATE_LIMITED: milliseconds until a retry may succeed. */
  readonly retryAfterMs: number | undefined;
  /** The command that failed, when a command failed. */
  readonly command: CommandName | undefined;

  constructor(code: ChatErrorCode, message: string, options: ChatClientErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.retryable = isRetryable(code);
    this.details = options.details;
    this.retryAfterMs = options.retryAfterMs;
    this.command = options.command;
  }

  static fromProtocol(error: ProtocolError, command?: CommandName): ChatClientError {
    return new ChatClientError(error.code, error.message, {
      details: error.details,
      retryAfterMs: error.retryAfterMs,
      command,
    });
  }
}

/** Wraps anything thrown into a ChatClientError. */
export function toChatClientError(err: unknown, command?: CommandName): ChatClientError {
  if (err instanceof ChatClientError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new ChatClientError(ClientErrorCode.DISCONNECTED, message, { command, cause: err });
}

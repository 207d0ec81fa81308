import { ErrorCode } from "../../../protocol/constants.js";
import type { ProtocolError } from "../../../protocol/index.js";

export { ErrorCode };

/**
 * An error a client may see: a code from the protocol's closed set and a message that is safe
 * to show. Anything else thrown inside a command becomes INTERNAL with a generic message.
 */
export class AppError extends Error {
  override name = "AppError";
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly extra: Pick<ProtocolError, "details" | "retryAfterMs"> = {},
  ) {
    super(message);
  }

  toProtocol(): ProtocolError {
    return { code: this.code, message: this.message, ...this.extra };
  }
}

export const notFound = (what = "Chat") => new AppError(ErrorCode.NOT_FOUND, `${what} not found`);

/**
 * Answers UNAVAILABLE when `work` takes longer than `ms` (a stalled database), and then calls
 * `onTimeout` (which aborts the work's signal: reads not yet sent are dropped). A write goes
 * on: if it commits later, the client's retry with the same clientId finds it.
 */
export function withTimeout<T>(work: Promise<T>, ms: number, onTimeout?: () => void): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      reject(new AppError(ErrorCode.UNAVAILABLE, "The service did not answer in time; retry"));
      onTimeout?.();
    }, ms);
  });
  return Promise.race([work, timeout]).finally(() => clearTimeout(timer));
}

import { ErrorCode } from "../../../protocol/constants.js";
import { AppError } from "../services/errors.js";

/** The `retryAfterMs` of a page command refused because the socket's queue is full. */
export const PAGE_GATE_RETRY_MS = 100;

/**
 * One socket's page commands (`chat:list`, `chat:open`, `message:history`, `message:sync`:
 * the commands whose answers the server builds from stored data, up to Limits.MAX_PAGE_BYTES
 * each): at most `maxRunning` run at once; the next `maxWaiting` wait for a slot, in order;
 * beyond that a command is refused RATE_LIMITED. So one socket makes the node build at most a
 * few large answers at a time, however many it asks for, while a client that opens many chats
 * at once after a reconnect (the SDK does) is served in turn rather than refused.
 */
export class PageGate {
  private running = 0;
  private readonly waiting: { start: () => void; abandon: (err: unknown) => void }[] = [];

  constructor(
    private readonly maxRunning: number,
    private readonly maxWaiting: number,
  ) {}

  /**
   * Resolves when the command may run (call `release` once it is done); rejects RATE_LIMITED
   * when the queue is full, or with `signal`'s reason if it aborts while waiting.
   */
  acquire(signal: AbortSignal): Promise<void> {
    if (this.running < this.maxRunning) {
      this.running++;
      return Promise.resolve();
    }
    if (this.waiting.length >= this.maxWaiting) {
      return Promise.reject(
        new AppError(
          ErrorCode.RATE_LIMITED,
          "Too many page requests in progress on this connection; wait for their answers",
          { retryAfterMs: PAGE_GATE_RETRY_MS },
        ),
      );
    }
    return new Promise((resolve, reject) => {
      const entry = {
        start: () => {
          signal.removeEventListener("abort", onAbort);
          this.running++;
          resolve();
        },
        abandon: reject,
      };
      const onAbort = () => {
        const i = this.waiting.indexOf(entry);
        if (i >= 0) this.waiting.splice(i, 1);
        reject(signal.reason);
      };
      signal.addEventListener("abort", onAbort, { once: true });
      this.waiting.push(entry);
    });
  }

  release(): void {
    this.running--;
    this.waiting.shift()?.start();
  }
}

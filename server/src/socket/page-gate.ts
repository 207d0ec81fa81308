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
    /** The refusal's message: says whose queue is full. */
    private readonly refusal = "Too many page requests in progress on this connection; wait for their answers",
  ) {}

  /** Nothing running and nothing waiting. */
  get idle(): boolean {
    return this.running === 0 && this.waiting.length === 0;
  }

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
        new AppError(ErrorCode.RATE_LIMITED, this.refusal, {
          retryAfterMs: PAGE_GATE_RETRY_MS,
        }),
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

/**
 * One PageGate per user, for the page commands of all of a user's sockets on this node
 * together (each command passes its socket's gate first). Without it a user with many sockets
 * (up to MAX_SOCKETS_PER_USER) could have many times Limits.MAX_PAGES_IN_FLIGHT reads in the
 * database at once, take the node's whole pool and slow every other user. An entry exists only
 * while the user has a page command running or waiting, so the map holds no more users than
 * have page commands in progress on this node.
 */
export class UserPageGates {
  private readonly gates = new Map<string, PageGate>();

  constructor(
    private readonly maxRunning: number,
    private readonly maxWaiting: number,
  ) {}

  /** As PageGate.acquire, for `userId`'s gate; call `release(userId)` once done. */
  async acquire(userId: string, signal: AbortSignal): Promise<void> {
    let gate = this.gates.get(userId);
    if (!gate) {
      gate = new PageGate(
        this.maxRunning,
        this.maxWaiting,
        "Too many page requests in progress for this user across their connections; wait for their answers",
      );
      this.gates.set(userId, gate);
    }
    try {
      await gate.acquire(signal);
    } catch (err) {
      this.dropIfIdle(userId, gate);
      throw err;
    }
  }

  release(userId: string): void {
    const gate = this.gates.get(userId);
    if (!gate) return;
    gate.release();
    this.dropIfIdle(userId, gate);
  }

  /** Users with page commands in progress on this node. */
  get size(): number {
    return this.gates.size;
  }

  private dropIfIdle(userId: string, gate: PageGate): void {
    if (gate.idle && this.gates.get(userId) === gate) this.gates.delete(userId);
  }
}

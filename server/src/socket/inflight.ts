/**
 * Counts commands in progress, so that a shutdown can let them finish (and ack) before the
 * sockets are closed: an acked message is committed, and a committed one is acked.
 */
export class Inflight {
  private count = 0;
  private waiters: (() => void)[] = [];
  /** Set when the node is shutting down: new commands are refused as UNAVAILABLE. */
  draining = false;

  async track<T>(work: Promise<T>): Promise<T> {
    this.count++;
    try {
      return await work;
    } finally {
      this.count--;
      if (this.count === 0) for (const w of this.waiters.splice(0)) w();
    }
  }

  get size(): number {
    return this.count;
  }

  /** Resolves when no command is in progress, or after `timeoutMs` (then returns false). */
  drain(timeoutMs: number): Promise<boolean> {
    if (this.count === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      this.waiters.push(() => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  }
}

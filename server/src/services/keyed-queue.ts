/**
 * Runs tasks one at a time per key, in the order they were queued; different keys run
 * concurrently. Used per chat so that this node stores a chat's messages one after another and
 * broadcasts them in `seq` order: Postgres assigns seq in commit order, but results from
 * different pool connections would otherwise come back, and be broadcast, in any order.
 */
export class KeyedQueue {
  private readonly tails = new Map<string, Promise<void>>();

  run<T>(key: string, task: () => Promise<T>): Promise<T> {
    const previous = this.tails.get(key) ?? Promise.resolve();
    const result = previous.then(task);
    const tail = result.then(
      () => {},
      () => {},
    );
    this.tails.set(key, tail);
    void tail.then(() => {
      if (this.tails.get(key) === tail) this.tails.delete(key);
    });
    return result;
  }
}

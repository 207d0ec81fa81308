import type { MessageDelta } from "../../../protocol/index.js";

/**
 * Coalesces the chunks of streamed replies into fewer `message:delta` broadcasts: a model that
 * emits 150 tokens/s, forwarded chunk by chunk, would cost every device that has the chat open
 * 150 packets a second (and this node as many room broadcasts, each a Redis publish with the
 * adapter). The chunks a node applies to one stream are buffered and sent as one delta every
 * `flushMs` (one timer for all streams of the node), and at once before anything that ends the
 * stream, so a device always sees the text before the end.
 *
 * A delta carries the reply's `offset` before it and the index of its first chunk. Chunks of
 * one stream applied by different nodes (a load balancer spreads the backend's calls) are
 * buffered on each node, so deltas of one stream may reach a device out of order, and the
 * client places text by offset (docs/protocol.md, "Streamed replies"). A node only joins a new
 * chunk to its buffer when it continues the buffered text exactly; otherwise it sends the
 * buffer first.
 */
export class DeltaCoalescer {
  private readonly pending = new Map<string, MessageDelta>();
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly send: (delta: MessageDelta) => void,
    /** Milliseconds chunks wait to be sent together; 0 sends every chunk at once. */
    private readonly flushMs: number,
  ) {}

  /** A chunk just applied to the stream's text at `offset`. */
  add(delta: MessageDelta): void {
    if (this.flushMs <= 0) {
      this.send(delta);
      return;
    }
    const buffered = this.pending.get(delta.streamId);
    if (buffered && buffered.offset + buffered.delta.length === delta.offset) {
      buffered.delta += delta.delta;
      return;
    }
    if (buffered) this.send(buffered);
    this.pending.set(delta.streamId, { ...delta });
    this.timer ??= setTimeout(() => this.flushAll(), this.flushMs);
  }

  /** Sends the stream's buffered text now (before the stream's end is broadcast). */
  flush(streamId: string): void {
    const buffered = this.pending.get(streamId);
    if (!buffered) return;
    this.pending.delete(streamId);
    this.send(buffered);
  }

  /** Sends everything buffered (the timer, and shutdown). */
  flushAll(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    const all = [...this.pending.values()];
    this.pending.clear();
    for (const delta of all) this.send(delta);
  }
}

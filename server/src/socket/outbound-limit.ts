import { DisconnectReason } from "../../../protocol/constants.js";
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";
import type { ChatSocket } from "./types.js";

/**
 * After a slow consumer is disconnected, how long its connection may still drain what was
 * queued (a client that reads gets the `connection:closing` at the end of it) before it is
 * terminated and its buffers freed.
 */
const SLOW_CONSUMER_GRACE_MS = 1000;

interface EnginePacket {
  data?: unknown;
}

/** The WebSocket under an Engine.IO connection (`ws`), for its `bufferedAmount` and `terminate`. */
type RawWebSocket = { bufferedAmount?: number; terminate?: () => void };

function packetBytes(packet: EnginePacket): number {
  const { data } = packet;
  if (typeof data === "string") return Buffer.byteLength(data);
  if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) return data.byteLength;
  return 0;
}

/**
 * Bounds what the node holds for one connection, whatever the client does. A client that stops
 * reading its socket (and still answers pings, so the heartbeat does not end it) would make the
 * node buffer every answer and event for it without end. After every packet written to the
 * connection, this adds up what is still queued for it: Engine.IO's write buffer (packets not
 * yet handed to the WebSocket) and the WebSocket's `bufferedAmount` (handed over, not yet
 * taken by the kernel). Past `maxBytes` the socket is sent `connection:closing` SLOW_CONSUMER
 * and disconnected, which aborts its commands in progress (see command.ts); nothing more is
 * written to it, and after a short grace its connection is terminated, freeing what it held.
 */
export function limitOutbound(
  socket: ChatSocket,
  options: { maxBytes: number; logger: Logger; metrics: Metrics },
): void {
  const conn = socket.conn;
  // Bytes of packets created since Engine.IO last flushed its write buffer to the WebSocket.
  let unflushed = 0;
  let tripped = false;
  conn.on("flush", () => {
    unflushed = 0;
  });
  conn.on("packetCreate", (packet: EnginePacket) => {
    unflushed += packetBytes(packet);
    if (tripped) return;
    const ws = (conn.transport as unknown as { socket?: RawWebSocket }).socket;
    const queued = unflushed + (ws?.bufferedAmount ?? 0);
    if (queued <= options.maxBytes) return;
    tripped = true;
    // Not from inside Engine.IO's sendPacket (which emitted this event): on the next tick.
    process.nextTick(() => {
      options.metrics.slowConsumers.inc();
      options.logger.warn(
        { userId: socket.data.userId, queuedBytes: queued },
        "socket disconnected: slow consumer",
      );
      socket.emit("connection:closing", {
        reason: DisconnectReason.SLOW_CONSUMER,
        message: "The connection did not read what the server sent; reconnect and catch up",
        reconnect: true,
      });
      socket.disconnect(true);
      setTimeout(() => ws?.terminate?.(), SLOW_CONSUMER_GRACE_MS).unref();
    });
  });
}

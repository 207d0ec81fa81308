/**
 * Coalesced writes: every packet a connection is sent in one turn of the event loop goes to
 * the kernel in one system call. Engine.IO writes each packet as soon as it is emitted, and ws
 * writes each frame on its own, so a message to a user with four devices was about nine
 * writes (the ack, `message:created` and `chat:updated` to the sender's device, two packets to
 * each other device), each a `writev` with its own TCP segment. Here a connection's flush is
 * deferred to the end of the current tick (`process.nextTick`, so no timer and no measurable
 * delay) and run with its TCP socket corked: the packets are framed as before and leave in one
 * `writev`, in their order. Packets, callbacks and Engine.IO's drain and close logic are
 * unchanged: only when the buffer is written moves, by less than a tick.
 *
 * It reaches into Engine.IO's WebSocket transport (`transport.socket._socket`, the net.Socket
 * under ws) and its `flush`; a connection where either is missing is left as it is.
 */
import type { Socket as NetSocket } from "node:net";
import type { Socket as EngineSocket } from "engine.io";

interface Flushable {
  flush(): void;
  transport?: { name?: string; socket?: { _socket?: NetSocket } };
}

/** Defers and corks the flushes of one Engine.IO connection (see the module's comment). */
export function coalesceWrites(conn: EngineSocket): void {
  const engine = conn as unknown as Flushable;
  const raw = engine.transport?.socket?._socket;
  if (engine.transport?.name !== "websocket" || !raw || typeof raw.cork !== "function") return;
  if (typeof engine.flush !== "function") return;
  const flush = engine.flush.bind(engine);
  let scheduled = false;
  const run = () => {
    scheduled = false;
    if (raw.destroyed) return flush();
    raw.cork();
    try {
      flush();
    } finally {
      raw.uncork();
    }
  };
  engine.flush = () => {
    if (scheduled) return;
    scheduled = true;
    process.nextTick(run);
  };
}

/**
 * Counts what the adapter does for this node, for `/metrics` and the load test: the room
 * broadcasts it starts and the pub/sub messages its Redis subscriber receives. Their ratio
 * across the nodes (received per node ÷ broadcasts of all nodes) is the fan-out's cost per node:
 * about 1 with the classic adapter, which delivers every broadcast to every node.
 */
import type { EventEmitter } from "node:events";
import type { Metrics } from "../metrics.js";
import type { ChatServer } from "./types.js";

/** The Redis message events of an ioredis subscriber (Buffer variants: one per message). */
const MESSAGE_EVENTS = ["messageBuffer", "pmessageBuffer", "smessageBuffer"] as const;

export function countAdapterTraffic(io: ChatServer, metrics: Metrics): void {
  const adapter = io.of("/").adapter as unknown as {
    broadcast: (...args: unknown[]) => unknown;
    broadcastWithAck?: (...args: unknown[]) => unknown;
    subClient?: EventEmitter;
  };
  // Socket.IO calls these through the instance (`this.adapter.broadcast(...)`), whatever the
  // adapter, so wrapping them here counts every room emit this node starts.
  for (const name of ["broadcast", "broadcastWithAck"] as const) {
    const original = adapter[name];
    if (typeof original !== "function") continue;
    adapter[name] = function (this: unknown, ...args: unknown[]) {
      metrics.broadcasts.inc();
      return original.apply(this, args);
    };
  }
  // The Redis adapters (classic and sharded) keep their subscriber as `subClient`; the
  // in-memory adapter has none and receives nothing.
  const sub = adapter.subClient;
  if (sub && typeof sub.on === "function") {
    const count = () => metrics.adapterMessagesReceived.inc();
    for (const event of MESSAGE_EVENTS) sub.on(event, count);
  }
}

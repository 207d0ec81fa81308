/**
 * The Redis adapter: with REDIS_URL set, every `io.to(room).emit` reaches the room's sockets on
 * every node. Classic (pub/sub) adapter: events are fire-and-forget across nodes, which is all
 * this product needs, because Postgres is the durable log and devices catch up with
 * `message:sync` after any gap (docs/deployment.md says more). A window in which events may
 * have been lost is noticed by the ClusterMonitor (cluster-monitor.ts), which has the node's
 * sockets resynchronise.
 */
import { createAdapter } from "@socket.io/redis-adapter";
import { Redis } from "ioredis";
import { ClusterMonitor } from "./cluster-monitor.js";
import type { Logger } from "./logger.js";

/** Default of CLUSTER_HEARTBEAT_MS. */
export const DEFAULT_CLUSTER_HEARTBEAT_MS = 1000;

export interface RedisAdapterHandle {
  adapter: ReturnType<typeof createAdapter>;
  /** The publishing connection, also usable for ordinary commands (rate limits). */
  client: Redis;
  /** Heartbeats between the nodes: says when this node's sockets must resynchronise. */
  monitor: ClusterMonitor;
  close(): Promise<void>;
}

export function createRedisAdapter(
  url: string,
  keyPrefix: string,
  logger: Logger,
  onError: (kind: "connection" | "publish") => void = () => {},
  options: { heartbeatMs?: number } = {},
): RedisAdapterHandle {
  // Separate connections: a subscribed connection cannot publish. While Redis is down the
  // publisher fails fast (no offline queue to grow without bound); the subscriber keeps its
  // queue so that its subscriptions are sent once connected, and resubscribes on reconnect.
  const pub = new Redis(url, { maxRetriesPerRequest: 1, enableOfflineQueue: false });
  const sub = new Redis(url, { maxRetriesPerRequest: null });
  const monitor = new ClusterMonitor({
    pub,
    sub,
    channel: `${keyPrefix}:cluster-heartbeat`,
    heartbeatMs: options.heartbeatMs ?? DEFAULT_CLUSTER_HEARTBEAT_MS,
    logger,
  });
  // The adapter does not handle a failed publish; unhandled, it would end the process.
  const publish = pub.publish.bind(pub);
  pub.publish = ((...args: Parameters<typeof publish>) =>
    publish(...args).catch((err: unknown) => {
      onError("publish");
      monitor.publishFailed();
      logger.warn({ err: String(err) }, "redis publish failed: cross-node event dropped");
      return 0;
    })) as typeof pub.publish;
  // Nor its unsubscribes when it closes: a reply still on its way when the connection quits
  // (a slow link at shutdown) would reject unhandled.
  for (const name of ["unsubscribe", "punsubscribe", "sunsubscribe"] as const) {
    const original = sub[name].bind(sub) as (...args: unknown[]) => Promise<unknown>;
    (sub[name] as unknown) = (...args: unknown[]) => {
      const result = original(...args);
      result.catch(() => {});
      return result;
    };
  }
  for (const [role, client] of [
    ["pub", pub],
    ["sub", sub],
  ] as const) {
    // Without a listener an ioredis error would crash the process; Redis being down must not.
    client.on("error", (err) => {
      onError("connection");
      logger.warn({ redis: role, err: String(err) }, "redis error");
    });
  }
  const adapter = createAdapter(pub, sub, { key: `${keyPrefix}:socket.io` });
  monitor.start();
  return {
    adapter,
    client: pub,
    monitor,
    async close() {
      await monitor.close();
      await Promise.allSettled([pub.quit(), sub.quit()]);
    },
  };
}

/**
 * The Redis adapter: with REDIS_URL set, every `io.to(room).emit` reaches the room's sockets on
 * every node. Classic (pub/sub) adapter: events are fire-and-forget across nodes, which is all
 * this product needs, because Postgres is the durable log and devices catch up with
 * `message:sync` after any gap (docs/deployment.md says more). A window in which events may
 * have been lost is noticed by the ClusterMonitor (cluster-monitor.ts), which has the node's
 * sockets resynchronise.
 */
import { createAdapter } from "@socket.io/redis-adapter";
import { ClusterMonitor } from "./cluster-monitor.js";
import type { Logger } from "./logger.js";
import { connectRedis, isCluster, type RedisClient, type RedisTarget } from "./redis/client.js";
import { shardedAdapter } from "./redis/sharded-adapter.js";

/** Which adapter carries broadcasts between nodes (REDIS_ADAPTER; see docs/deployment.md). */
export type AdapterKind = "classic" | "sharded";

/** Default of CLUSTER_HEARTBEAT_MS. */
export const DEFAULT_CLUSTER_HEARTBEAT_MS = 1000;

export interface RedisAdapterHandle {
  adapter: ReturnType<typeof createAdapter>;
  /** The publishing connection, also usable for ordinary commands (rate limits). */
  client: RedisClient;
  /** The subscribing connection (to count what the adapter receives). */
  subscriber: RedisClient;
  /** Heartbeats between the nodes: says when this node's sockets must resynchronise. */
  monitor: ClusterMonitor;
  close(): Promise<void>;
}

export function createRedisAdapter(
  target: string | RedisTarget,
  keyPrefix: string,
  logger: Logger,
  onError: (kind: "connection" | "publish") => void = () => {},
  options: {
    /** Milliseconds between heartbeats (CLUSTER_HEARTBEAT_MS). */
    heartbeatMs?: number | undefined;
    /** The adapter (REDIS_ADAPTER); default classic. */
    kind?: AdapterKind | undefined;
  } = {},
): RedisAdapterHandle {
  const kind = options.kind ?? "classic";
  // Separate connections: a subscribed connection cannot publish (see redis/client.ts for how
  // each behaves while Redis is down).
  const where = typeof target === "string" ? { url: target } : target;
  const pub = connectRedis(where, "commands");
  const sub = connectRedis(where, "subscriber", { sharded: kind === "sharded" });
  const monitor = new ClusterMonitor({
    pub,
    sub,
    channel: `${keyPrefix}:cluster-heartbeat`,
    heartbeatMs: options.heartbeatMs ?? DEFAULT_CLUSTER_HEARTBEAT_MS,
    logger,
  });
  // The adapter does not handle a failed publish; unhandled, it would end the process.
  for (const name of ["publish", "spublish"] as const) {
    const original = pub[name].bind(pub) as (...args: unknown[]) => Promise<unknown>;
    (pub[name] as unknown) = (...args: unknown[]) =>
      original(...args).catch((err: unknown) => {
        onError("publish");
        monitor.publishFailed();
        logger.warn({ err: String(err) }, "redis publish failed: cross-node event dropped");
        return 0;
      });
  }
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
    client.on("error", (err: unknown) => {
      onError("connection");
      logger.warn({ redis: role, err: String(err) }, "redis error");
    });
  }
  const adapter =
    kind === "sharded"
      ? (shardedAdapter(pub, sub, `${keyPrefix}:socket.io`, logger) as ReturnType<
          typeof createAdapter
        >)
      : createAdapter(pub, sub, { key: `${keyPrefix}:socket.io` });
  monitor.start();
  // On a Redis Cluster a failed master takes the sharded channels of its slots with it while
  // the heartbeat's connection (to another node) stays up: a node leaving is a lost link too.
  if (isCluster(sub)) sub.on("-node", () => monitor.linkLost());
  return {
    adapter,
    client: pub,
    subscriber: sub,
    monitor,
    async close() {
      await monitor.close();
      await Promise.allSettled([pub.quit(), sub.quit()]);
    },
  };
}

/**
 * Where this node's Redis is, and the one place that opens connections to it: one Redis
 * (REDIS_URL) or a Redis Cluster (REDIS_CLUSTER_NODES, through ioredis' Cluster client). Every
 * store and the adapter take a RedisClient and work on either; what differs on a cluster (keys
 * that a script touches together share a hash slot, no multi-slot pipelines) is handled where
 * the keys are made (see stream.repository.ts, rate-limits.ts, revocations.ts).
 */
import { Cluster, type ClusterNode, Redis, type RedisOptions } from "ioredis";

/** A connection to one Redis or to a Redis Cluster. */
export type RedisClient = Redis | Cluster;

/** One Redis, or the seed nodes of a Redis Cluster (the client discovers the rest). */
export type RedisTarget =
  | { url: string }
  | {
      cluster: {
        /** Seed nodes: any reachable subset of the cluster's nodes. */
        nodes: { host: string; port: number }[];
        username?: string | undefined;
        password?: string | undefined;
        /** TLS to every node (managed clusters: `rediss://` seeds). */
        tls?: boolean | undefined;
      };
    };

/** What a connection is for: commands (fail fast while down) or subscriptions (queue, resubscribe). */
export type RedisRole = "commands" | "subscriber";

/** True on a Redis Cluster client. */
export function isCluster(client: RedisClient): client is Cluster {
  return (client as { isCluster?: boolean }).isCluster === true;
}

/**
 * Opens a connection. Commands fail fast while Redis is unreachable (no offline queue to grow
 * without bound: every caller has a fallback or answers UNAVAILABLE); a subscriber keeps its
 * queue so that its subscriptions are sent once connected, and resubscribes on reconnect.
 * `sharded`: the subscriber holds sharded (SSUBSCRIBE) subscriptions; on a cluster ioredis
 * then keeps one subscriber connection per master and moves the channels on a failover.
 */
export function connectRedis(
  target: RedisTarget,
  role: RedisRole,
  options: { sharded?: boolean } = {},
): RedisClient {
  const perRole: RedisOptions =
    role === "commands"
      ? { maxRetriesPerRequest: 1, enableOfflineQueue: false }
      : { maxRetriesPerRequest: null };
  if ("url" in target) return new Redis(target.url, perRole);
  const { nodes, username, password, tls } = target.cluster;
  const seeds: ClusterNode[] = nodes.map((n) => ({ host: n.host, port: n.port }));
  return new Cluster(seeds, {
    // Commands fail fast like on one Redis; a subscriber queues until the slots are known.
    enableOfflineQueue: role === "subscriber",
    shardedSubscribers: role === "subscriber" && options.sharded === true,
    // A failover moves a master's slots to its replica within the cluster's node timeout:
    // commands caught in it are retried on the new master instead of failing at once.
    retryDelayOnFailover: 200,
    retryDelayOnClusterDown: 200,
    retryDelayOnTryAgain: 100,
    slotsRefreshTimeout: 2000,
    redisOptions: {
      ...(role === "commands" ? { maxRetriesPerRequest: 1 } : { maxRetriesPerRequest: null }),
      ...(username ? { username } : {}),
      ...(password ? { password } : {}),
      ...(tls ? { tls: {} } : {}),
    },
  });
}

/**
 * A key's hash-tagged group: keys with the same `{…}` part live in one hash slot of a cluster,
 * so one Lua script may touch them together. On one Redis the braces are only characters.
 */
export function slotTag(name: string): string {
  return `{${name}}`;
}

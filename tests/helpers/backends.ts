/**
 * The Redis backends the cross-node suites run on (describe.each): one Redis with the classic
 * adapter, one Redis with the sharded adapter, and a real Redis Cluster (three masters, three
 * replicas, started from the local redis-server on first use and stopped by `stopBackends`)
 * with the sharded adapter. Each gives the options for startTestServer and a cleanup of the
 * keys a test cluster of nodes left.
 */
import { randomBytes } from "node:crypto";
import { Redis } from "ioredis";
import { connectRedis, type RedisClient } from "../../server/src/redis/client.js";
import type { AdapterKind } from "../../server/src/redis-adapter.js";
import { RedisClusterProcess } from "./redis-process.js";
import { type TestServerOptions, testRedisUrl } from "./server.js";

export interface RedisBackend {
  name: string;
  /** Options for startTestServer (starts the cluster on first call). */
  options(): Promise<Pick<TestServerOptions, "redisUrl" | "redisCluster" | "redisAdapter">>;
  /** Deletes the keys of `prefix` (a cluster is discarded whole by stopBackends). */
  cleanup(prefix: string): Promise<void>;
}

let cluster: RedisClusterProcess | undefined;
let starting: Promise<RedisClusterProcess> | undefined;

/** The file's Redis Cluster, started once. */
export function testCluster(): Promise<RedisClusterProcess> {
  starting ??= (async () => {
    const c = new RedisClusterProcess();
    cluster = c;
    await c.start();
    return c;
  })();
  return starting;
}

/** Stops the file's Redis Cluster, if one was started (afterAll). */
export async function stopBackends(): Promise<void> {
  await starting?.catch(() => {});
  await cluster?.stop();
  cluster = undefined;
  starting = undefined;
}

async function deleteKeys(prefix: string): Promise<void> {
  const redis = new Redis(testRedisUrl, { maxRetriesPerRequest: 1 });
  try {
    const keys = await redis.keys(`${prefix}:*`);
    if (keys.length > 0) await redis.del(...keys);
  } finally {
    redis.disconnect();
  }
}

function single(adapter: AdapterKind): RedisBackend {
  return {
    name: `redis (${adapter} adapter)`,
    options: async () => ({ redisUrl: testRedisUrl, redisAdapter: adapter }),
    cleanup: deleteKeys,
  };
}

export const redisBackends: RedisBackend[] = [
  single("classic"),
  single("sharded"),
  {
    name: "redis cluster (sharded adapter)",
    options: async () => ({ redisCluster: (await testCluster()).nodes, redisAdapter: "sharded" }),
    cleanup: async () => {},
  },
];

/**
 * The backends a store suite runs on (describe.each): this node's memory (no client), one
 * Redis, and the file's Redis Cluster. `client()` connects (and waits until ready); the suite
 * closes what it opened with `disconnect()`.
 */
export interface StoreBackend {
  name: string;
  /** True when two stores on it (two nodes) share their state. */
  shared: boolean;
  client(): Promise<RedisClient | undefined>;
}

async function ready(client: RedisClient): Promise<RedisClient> {
  client.on("error", () => {});
  if (client.status !== "ready") {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("redis not ready in 10 s")), 10_000);
      client.once("ready", () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
  return client;
}

export const storeBackends: StoreBackend[] = [
  { name: "memory", shared: false, client: async () => undefined },
  {
    name: "redis",
    shared: true,
    client: () => ready(connectRedis({ url: testRedisUrl }, "commands")),
  },
  {
    name: "redis cluster",
    shared: true,
    client: async () =>
      ready(connectRedis({ cluster: { nodes: (await testCluster()).nodes } }, "commands")),
  },
];

/**
 * The adapters a single-node realtime suite runs on (describe.each): the in-memory one, and
 * the Redis adapter (sharded, the default) on one Redis with a key prefix of its own, so that
 * every emit and join goes through Redis as it does with several nodes.
 */
export const adapterBackends: {
  name: string;
  options(): Pick<TestServerOptions, "redisUrl" | "redisAdapter" | "redisKeyPrefix">;
}[] = [
  { name: "in-memory", options: () => ({}) },
  {
    name: "redis (sharded)",
    options: () => ({
      redisUrl: testRedisUrl,
      redisAdapter: "sharded",
      redisKeyPrefix: `test-rt-${randomBytes(4).toString("hex")}`,
    }),
  },
];

/**
 * A real server node for tests: port 0 on 127.0.0.1, its own fresh database, development-style
 * auth with a key generated for the test run (verified through @clerk/backend's verifyToken
 * with `jwtKey`, exactly as production does with Clerk's key), and real socket.io-client
 * connections. Everything is closed by `close()`.
 */
import { generateKeyPairSync } from "node:crypto";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { io as connect, type Socket } from "socket.io-client";
import type { ClientToServerEvents, ServerToClientEvents } from "../../protocol/index.js";
import { type Application, createApplication } from "../../server/src/app.js";
import { type MintOptions, mintSessionToken } from "../../server/src/auth/dev-keys.js";
import { createClerkVerifier } from "../../server/src/auth/token-verifier.js";
import type { AppWebhookConfig } from "../../server/src/config.js";
import { createDatabase, type DatabaseHandle } from "../../server/src/db/client.js";
import {
  DEFAULT_HTTP_TIMEOUTS,
  type HttpTimeouts,
  httpServerOptions,
} from "../../server/src/http/server-options.js";
import { createLogger } from "../../server/src/logger.js";
import { Metrics } from "../../server/src/metrics.js";
import { type AdapterKind, createRedisAdapter } from "../../server/src/redis-adapter.js";
import type { AppEvents } from "../../server/src/services/app-events.js";
import { type RateLimitConfig, RateLimits } from "../../server/src/services/rate-limits.js";
import type { OriginPolicy } from "../../server/src/socket/origins.js";
import { createTestDatabase, type TestDatabase } from "./db.js";

export type ClientSocket = Socket<ServerToClientEvents, ClientToServerEvents>;

/** One RSA key pair per test process: signs tokens; the server verifies with its public half. */
export const testKeys = (() => {
  const { privateKey, publicKey } = generateKeyPairSync("rsa", {
    modulusLength: 2048,
    publicKeyEncoding: { type: "spki", format: "pem" },
    privateKeyEncoding: { type: "pkcs8", format: "pem" },
  });
  return { privateKeyPem: privateKey, publicKeyPem: publicKey };
})();

export const AUTHORIZED_PARTY = "http://localhost:3000";

/** Redis for multi-node tests. The tests fail (never skip) when it is not reachable. */
export const testRedisUrl = process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379";

/** The adapter multi-node tests use unless they choose: the product's default, sharded. */
export const testRedisAdapter: AdapterKind =
  process.env.TEST_REDIS_ADAPTER === "classic" ? "classic" : "sharded";

/** A Clerk-shaped session token for `userId`, signed with the test key. */
export function tokenFor(userId: string, options: MintOptions = {}): Promise<string> {
  return mintSessionToken(testKeys.privateKeyPem, userId, {
    authorizedParty: AUTHORIZED_PARTY,
    ...options,
  });
}

export interface TestServerOptions {
  /** Reuse a database (several nodes on one database); default a fresh one, dropped on close. */
  databaseUrl?: string;
  tokenGraceSeconds?: number;
  authorizedParties?: string[];
  /** Use the Redis adapter on this Redis (multi-node tests). Default: in-memory adapter. */
  redisUrl?: string;
  /** Use a Redis Cluster (these seed nodes) for the adapter and every store, instead of redisUrl. */
  redisCluster?: { host: string; port: number }[];
  /** The adapter between nodes (default testRedisAdapter). */
  redisAdapter?: AdapterKind;
  /** Redis key prefix; nodes of one test cluster share one, clusters of other tests must not. */
  redisKeyPrefix?: string;
  /** Milliseconds between the nodes' heartbeats (CLUSTER_HEARTBEAT_MS); default the server's. */
  clusterHeartbeatMs?: number;
  /** Flood limits (per address, user and socket); default generous enough for load-shaped tests. */
  rateLimits?: Partial<RateLimitConfig>;
  /** Browser origins allowed to connect; default as in development: any loopback origin. */
  origins?: OriginPolicy;
  /** Trusted reverse proxies (X-Forwarded-For hops) for the client address; default 0. */
  trustProxy?: number;
  commandTimeoutMs?: number;
  /** Milliseconds from the WebSocket handshake to completed authentication (default 10 s). */
  connectTimeoutMs?: number;
  /** How long a client may take to send headers and bodies (default as in production). */
  httpTimeouts?: Partial<HttpTimeouts>;
  /** Bytes queued for one connection before it is disconnected as a slow consumer. */
  socketMaxBufferedBytes?: number;
  /** Enables the service-role HTTP API with this key. */
  serviceApiKey?: string;
  /** Enables `POST /webhooks/clerk` with this signing secret (`whsec_…`). */
  webhookSigningSecret?: string;
  /** Milliseconds before a streamed reply with no news is marked failed (default 60 s). */
  streamTimeoutMs?: number;
  /** Coalescing window of stream deltas (default the server's, 40 ms; 0: one delta per chunk). */
  streamFlushMs?: number;
  /** Events for the app's backend (a stop requested); default none. */
  appEvents?: AppEvents;
  /** Enables the development route `POST /dev/token`, minting with the test key. */
  devTokens?: boolean;
  /** Webhooks to the app's backend (the outbox's delivery runs in this node); defaults below. */
  appWebhooks?: Pick<AppWebhookConfig, "url" | "secret"> & Partial<AppWebhookConfig>;
  /** The delivery on a worker thread of its own (APP_WEBHOOK_THREAD); default true, as in production. */
  appWebhookThread?: boolean;
}

/** Short waits for tests: retries within 100 ms, capped at 1 s; dead nodes noticed in 3 s. */
export const testWebhookDefaults: Omit<AppWebhookConfig, "url" | "secret"> = {
  timeoutMs: 2000,
  retryForSeconds: 86_400,
  retryFirstDelayMs: 100,
  retryMaxDelayMs: 1000,
  concurrency: 4,
  nodeTimeoutMs: 3000,
};

export interface TestServer {
  url: string;
  port: number;
  app: Application;
  /** The node's flood limits (to inspect what they hold in memory). */
  rateLimits: RateLimits;
  database: DatabaseHandle;
  /** The database this server uses (its URL, for direct queries in assertions). */
  databaseUrl: string;
  /** Connects a real socket.io-client as `userId` and waits for the connection. */
  connectAs(userId: string, options?: MintOptions): Promise<ClientSocket>;
  /** A socket that is not connected yet (for testing handshake failures). */
  socket(
    auth: Record<string, unknown> | undefined,
    extra?: Parameters<typeof connect>[1],
  ): ClientSocket;
  close(): Promise<void>;
}

export async function startTestServer(options: TestServerOptions = {}): Promise<TestServer> {
  let tdb: TestDatabase | undefined;
  let databaseUrl = options.databaseUrl;
  if (!databaseUrl) {
    tdb = await createTestDatabase();
    databaseUrl = tdb.url;
  }
  const database = createDatabase(databaseUrl, { max: 10 });
  const logger = createLogger(process.env.TEST_LOG_LEVEL ?? "silent");
  const metrics = new Metrics();
  const target = options.redisCluster
    ? { cluster: { nodes: options.redisCluster } }
    : options.redisUrl
      ? { url: options.redisUrl }
      : undefined;
  const redis = target
    ? createRedisAdapter(
        target,
        options.redisKeyPrefix ?? "test",
        logger,
        (kind) => metrics.adapterErrors.inc({ kind }),
        {
          heartbeatMs: options.clusterHeartbeatMs,
          kind: options.redisAdapter ?? testRedisAdapter,
        },
      )
    : undefined;
  const rateLimits = new RateLimits(
    {
      messagesPerWindow: 100_000,
      chatCreatesPerMinute: 100_000,
      chatEditsPerMinute: 100_000,
      messageWindowSeconds: 10,
      connectionsPerMinute: 10_000,
      maxSocketsPerUser: 1000,
      connectionsPerAddressPerMinute: 1_000_000,
      commandsPerSecond: 1_000_000,
      commandBurst: 1_000_000,
      ...options.rateLimits,
    },
    redis?.client,
    options.redisKeyPrefix ?? "test",
  );
  const httpTimeouts = { ...DEFAULT_HTTP_TIMEOUTS, ...options.httpTimeouts };
  const httpServer = createServer(httpServerOptions(httpTimeouts));
  const app = createApplication(httpServer, {
    metrics,
    rateLimits,
    commandTimeoutMs: options.commandTimeoutMs,
    connectTimeoutMs: options.connectTimeoutMs,
    httpBodyTimeoutMs: httpTimeouts.bodyTimeoutMs,
    socketMaxBufferedBytes: options.socketMaxBufferedBytes,
    database,
    verifier: createClerkVerifier({
      jwtKey: testKeys.publicKeyPem,
      authorizedParties: options.authorizedParties ?? [AUTHORIZED_PARTY],
    }),
    logger,
    origins: options.origins ?? { allowed: [], loopback: true },
    trustProxy: options.trustProxy,
    tokenGraceSeconds: options.tokenGraceSeconds ?? 15,
    adapter: redis?.adapter,
    clusterMonitor: redis?.monitor,
    redis: redis
      ? { client: redis.client, keyPrefix: options.redisKeyPrefix ?? "test" }
      : undefined,
    serviceApiKey: options.serviceApiKey,
    webhookSigningSecret: options.webhookSigningSecret,
    streamTimeoutMs: options.streamTimeoutMs,
    streamFlushMs: options.streamFlushMs,
    appEvents: options.appEvents,
    mintDevToken: options.devTokens
      ? (userId, authorizedParty) => tokenFor(userId, { authorizedParty })
      : undefined,
    appWebhooks: options.appWebhooks
      ? {
          config: { ...testWebhookDefaults, ...options.appWebhooks },
          databaseUrl,
          thread: options.appWebhookThread ?? true,
        }
      : undefined,
  });
  await app.ready;
  await new Promise<void>((resolve) => httpServer.listen(0, "127.0.0.1", resolve));
  const port = (httpServer.address() as AddressInfo).port;
  const url = `http://127.0.0.1:${port}`;
  const clients: ClientSocket[] = [];

  const socket: TestServer["socket"] = (auth, extra = {}) => {
    const s: ClientSocket = connect(url, {
      transports: ["websocket"],
      reconnection: false,
      forceNew: true,
      ...(auth ? { auth } : {}),
      ...extra,
    });
    clients.push(s);
    return s;
  };

  return {
    url,
    port,
    app,
    rateLimits,
    database,
    databaseUrl,
    socket,
    async connectAs(userId, mint) {
      const s = socket({ token: await tokenFor(userId, mint) });
      await new Promise<void>((resolve, reject) => {
        s.once("connect", resolve);
        s.once("connect_error", reject);
      });
      return s;
    },
    async close() {
      for (const c of clients) c.disconnect();
      await app.close();
      await redis?.close();
      await database.close();
      await tdb?.drop();
    },
  };
}

/**
 * Polls `check` until it returns without throwing (or `timeoutMs` passes, then rethrows its
 * last error). For "eventually" assertions; never a fixed sleep.
 */
export async function eventually<T>(check: () => T | Promise<T>, timeoutMs = 5000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await check();
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

/** Records every event a socket receives, by name, for later assertions. */
export function recordEvents(s: ClientSocket) {
  const events: { name: string; payload: unknown }[] = [];
  s.onAny((name: string, payload: unknown) => events.push({ name, payload }));
  return {
    events,
    of<T = unknown>(name: keyof ServerToClientEvents): T[] {
      return events.filter((e) => e.name === name).map((e) => e.payload as T);
    },
  };
}

/**
 * The one place that reads `process.env`. Everything is parsed and checked once, at start;
 * a bad value stops the process with a message that names the variable.
 */
import { z } from "zod";
import type { HttpTimeouts } from "./http/server-options.js";
import type { RateLimitConfig } from "./services/rate-limits.js";
import { normalizeOrigin, type OriginPolicy } from "./socket/origins.js";

const csv = z
  .string()
  .transform((s) =>
    s
      .split(",")
      .map((p) => p.trim())
      .filter(Boolean),
  )
  .pipe(z.array(z.string()));

const optionalString = z
  .string()
  .optional()
  .transform((s) => (s === undefined || s.trim() === "" ? undefined : s));

const envSchema = z.object({
  /** `production` turns off development auth and the embedded database. Default `development`. */
  NODE_ENV: z.enum(["development", "production", "test"]).default("development"),
  /** TCP port to listen on. Default 3000; 0 picks a free port. */
  PORT: z.coerce.number().int().min(0).max(65535).default(3000),
  /** Interface to bind. Default 127.0.0.1 in development (not exposed); set 0.0.0.0 in containers. */
  HOST: optionalString,
  /** Postgres connection string. Unset outside production: an embedded Postgres is started. */
  DATABASE_URL: optionalString.pipe(z.url({ protocol: /^postgres(ql)?$/ }).optional()),
  /** Maximum connections in this node's Postgres pool. Default 10. */
  DATABASE_POOL_SIZE: z.coerce.number().int().min(1).max(500).default(10),
  /** Redis connection string. When set, nodes share events through the Redis adapter. */
  REDIS_URL: optionalString.pipe(z.url({ protocol: /^rediss?$/ }).optional()),
  /**
   * Seed nodes of a Redis Cluster, comma-separated `host:port` (or `redis[s]://[user:pass@]host:port`,
   * the same credentials and TLS for every node): every Redis use goes to the cluster. Exclusive
   * with REDIS_URL.
   */
  REDIS_CLUSTER_NODES: optionalString.pipe(csv.optional()),
  /**
   * The adapter between nodes: `sharded` (Redis 7 sharded pub/sub, a node receives only the
   * rooms it has sockets in) or `classic` (pub/sub, every node receives every broadcast).
   * Default sharded (docs/benchmarks.md, "Adapter fan-out").
   */
  REDIS_ADAPTER: z.enum(["classic", "sharded"]).default("sharded"),
  /** Prefix of every Redis key and channel, so several deployments can share one Redis. */
  REDIS_KEY_PREFIX: z.string().min(1).default("chat"),
  /**
   * With REDIS_URL: milliseconds between the nodes' heartbeats, by which a node notices that
   * events between nodes were lost (Redis down, a node that could not publish or went silent)
   * and has its sockets resynchronise. A peer silent for 4 beats counts as lost. Default 1000.
   */
  CLUSTER_HEARTBEAT_MS: z.coerce.number().int().min(50).max(60_000).default(1000),
  /** PEM public key of the Clerk instance: networkless token verification. */
  CLERK_JWT_KEY: optionalString,
  /** Clerk secret key: JWKS fetched from Clerk's API when CLERK_JWT_KEY is not set. */
  CLERK_SECRET_KEY: optionalString,
  /** Comma-separated origins accepted in a token's `azp` claim. Required in production. */
  CLERK_AUTHORIZED_PARTIES: optionalString.pipe(csv.optional()),
  /** Secret for verifying Clerk webhooks (svix). Webhooks are disabled without it. */
  CLERK_WEBHOOK_SIGNING_SECRET: optionalString,
  /**
   * Shared secret of the service-role HTTP API (`Authorization: Bearer <key>`), at least 32
   * characters. The API is disabled (404) without it.
   */
  SERVICE_API_KEY: optionalString.pipe(
    z
      .string()
      .min(32, "must be at least 32 characters (e.g. openssl rand -hex 32)")
      .regex(/^\S+$/, "must not contain whitespace")
      .optional(),
  ),
  /** Milliseconds a streamed reply may go without a chunk before it is marked failed. */
  SERVICE_STREAM_TIMEOUT_MS: z.coerce.number().int().min(1000).max(3_600_000).default(60_000),
  /**
   * The app's backend: every event (a user's message, a stop request, a deleted chat) is POSTed
   * here as a signed webhook (docs/service-api.md, "Webhooks to your backend"). http(s) only.
   * Unset: no events are enqueued at all.
   */
  APP_WEBHOOK_URL: optionalString.pipe(z.url({ protocol: /^https?$/ }).optional()),
  /** Standard Webhooks signing secret (`whsec_` + base64). Required with APP_WEBHOOK_URL. */
  APP_WEBHOOK_SECRET: optionalString,
  /** Milliseconds one delivery may take (connect to last byte) before it counts as failed. Default 10 s. */
  APP_WEBHOOK_TIMEOUT_MS: z.coerce.number().int().min(100).max(120_000).default(10_000),
  /**
   * Seconds an event is retried for, from when it was stored, before it is marked failed (listed
   * by GET /service/v1/webhooks/failed, requeued by POST …/requeue). Default 24 h.
   */
  APP_WEBHOOK_RETRY_FOR_SECONDS: z.coerce
    .number()
    .int()
    .min(1)
    .max(30 * 86_400)
    .default(86_400),
  /** Milliseconds before the first retry; each next wait doubles. Default 1 s: within seconds. */
  APP_WEBHOOK_RETRY_FIRST_DELAY_MS: z.coerce.number().int().min(10).max(3_600_000).default(1000),
  /**
   * Longest wait between two attempts, in milliseconds. Default 60 s: a receiver that comes back
   * is caught up within about a minute.
   */
  APP_WEBHOOK_RETRY_MAX_DELAY_MS: z.coerce.number().int().min(10).max(3_600_000).default(60_000),
  /**
   * Deliveries this node makes at once (each to a different chat; a chat's own events go one at
   * a time). Delivery is bound by round trips to the receiver, so this is what lets it keep up
   * with the storing rate (docs/benchmarks.md). Default 32.
   */
  APP_WEBHOOK_CONCURRENCY: z.coerce.number().int().min(1).max(100).default(64),
  /**
   * Milliseconds a node's lease on a chat lasts without a renewal (app_event_leases; renewed
   * every fifth of it): a node killed or cut off from Postgres has its chats taken over by the
   * other nodes this long after its last renewal. Must exceed APP_WEBHOOK_TIMEOUT_MS. Default 15 s.
   */
  APP_WEBHOOK_NODE_TIMEOUT_MS: z.coerce.number().int().min(500).max(600_000).default(15_000),
  /**
   * Run the delivery on a worker thread of its own (its own event loop, so another core):
   * storing messages and delivering their events no longer compete for one (docs/benchmarks.md).
   * Default true; false delivers on the node's main event loop.
   */
  APP_WEBHOOK_THREAD: z
    .enum(["true", "false", "1", "0"])
    .default("true")
    .transform((v) => v === "true" || v === "1"),
  /**
   * Milliseconds the chunks of a streamed reply are gathered into one `message:delta` per node.
   * A model emitting 150 tokens/s would otherwise cost every device that has the chat open 150
   * packets a second; 40 ms (25 a second) still looks fluid. 0 sends every chunk at once.
   */
  STREAM_FLUSH_MS: z.coerce.number().int().min(0).max(1000).default(40),
  /** Seconds a socket may stay connected after its token expired before it is disconnected. */
  TOKEN_GRACE_SECONDS: z.coerce.number().int().min(0).max(30).default(15),
  /** Apply pending migrations at start (under an advisory lock, so nodes take turns). Default true. */
  MIGRATE_ON_START: z
    .enum(["true", "false", "1", "0"])
    .default("true")
    .transform((v) => v === "true" || v === "1"),
  /** Milliseconds a command may take before it is answered UNAVAILABLE (slow or cut database). */
  COMMAND_TIMEOUT_MS: z.coerce.number().int().min(100).max(60_000).default(5000),
  /**
   * Milliseconds a connection may take from its WebSocket handshake to completed authentication
   * (Socket.IO's connectTimeout) before it is closed. Default 10 s (Socket.IO's own, 45 s, let
   * idle unauthenticated WebSockets pile up); a connection refused at the handshake (origin,
   * address limit) that never sends its CONNECT is closed after 2 s.
   */
  CONNECT_TIMEOUT_MS: z.coerce.number().int().min(1000).max(60_000).default(10_000),
  /**
   * Milliseconds a client may take to send a request's headers (Node's headersTimeout; its
   * default is 60 s). Default 10 s.
   */
  HTTP_HEADERS_TIMEOUT_MS: z.coerce.number().int().min(1000).max(120_000).default(10_000),
  /**
   * Milliseconds a request body to the service API or the Clerk webhook may take to arrive;
   * past it the request is answered 408 and its connection closed. Default 10 s (Node's own
   * bound, requestTimeout, is 300 s, and the webhook reads up to 256 KiB before it can check
   * the signature).
   */
  HTTP_BODY_TIMEOUT_MS: z.coerce.number().int().min(1000).max(120_000).default(10_000),
  /**
   * Bytes that may wait to be written to one connection (answers and events its client has not
   * read yet) before the socket is disconnected with SLOW_CONSUMER. Bounds the memory one
   * client that stops reading can hold on a node. Default 8 MiB: several of the largest answers
   * (a page is at most about 1 MiB, a message event under 1 MiB) and bursts of events to a
   * client on a slow network; at least 2 MiB, so that one answer always fits.
   */
  SOCKET_MAX_BUFFERED_BYTES: z.coerce
    .number()
    .int()
    .min(2 * 1024 * 1024)
    .max(1024 * 1024 * 1024)
    .default(8 * 1024 * 1024),
  /**
   * Write every packet a connection is sent in one turn of the event loop in one system call
   * (socket/coalesce-writes.ts). Default true; false writes each packet as it is emitted
   * (Engine.IO's own behaviour), for comparison (docs/benchmarks.md).
   */
  SOCKET_COALESCE_WRITES: z
    .enum(["true", "false", "1", "0"])
    .default("true")
    .transform((v) => v === "true" || v === "1"),
  /** Messages one user may send per RATE_LIMIT_MESSAGE_WINDOW_SECONDS, across devices and nodes. */
  RATE_LIMIT_MESSAGES: z.coerce.number().int().min(1).default(30),
  /**
   * Per-user write limits by subscription tier (`users.subscription_tier`), as JSON:
   * `{"<tier>": {"messages": n, "chatCreates": n, "chatEdits": n}}`, every field optional.
   * Defaults: free = RATE_LIMIT_MESSAGES messages per window, 20 chat creates and 60 chat
   * renames/deletes per minute; pro = 4 × free; enterprise = 10 × free. A tier named here
   * overrides those fields (a new name adds a tier, starting from free's limits); a user whose
   * tier is unknown or unset has the free limits. The tier is read when a socket connects.
   */
  RATE_LIMIT_TIERS: optionalString.pipe(
    z
      .string()
      .transform((text, ctx) => {
        try {
          return JSON.parse(text) as unknown;
        } catch {
          ctx.addIssue({ code: "custom", message: "must be JSON" });
          return z.NEVER;
        }
      })
      .pipe(
        z.record(
          z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/, "tier names are 1-64 letters, digits, _ . -"),
          z.strictObject({
            messages: z.number().int().min(1).optional(),
            chatCreates: z.number().int().min(1).optional(),
            chatEdits: z.number().int().min(1).optional(),
          }),
        ),
      )
      .optional(),
  ),
  /** The message rate window, in seconds. */
  RATE_LIMIT_MESSAGE_WINDOW_SECONDS: z.coerce.number().int().min(1).default(10),
  /** Connection attempts one user may make per minute, across nodes. */
  RATE_LIMIT_CONNECTIONS_PER_MINUTE: z.coerce.number().int().min(1).default(60),
  /**
   * Connection attempts one client address may make per minute, across nodes. Checked before the
   * token is verified, so a flood of handshakes costs no signature checks and no database work.
   * Default 300: generous enough for an office or a carrier NAT (many users behind one address)
   * reconnecting after a network blip.
   */
  RATE_LIMIT_CONNECTIONS_PER_IP_PER_MINUTE: z.coerce.number().int().min(1).default(300),
  /**
   * Commands one socket may send per second, on average (a token bucket local to the socket).
   * Applies to every event a client sends, not only messages. Default 20.
   */
  RATE_LIMIT_COMMANDS_PER_SECOND: z.coerce.number().min(0.1).default(20),
  /**
   * Commands one socket may send at once before the per-second rate applies (the bucket's size;
   * a reconnect re-opens chats and catches up in one burst). A socket that goes on sending
   * another full burst while refused is disconnected (COMMAND_FLOOD). Default 60.
   */
  RATE_LIMIT_COMMAND_BURST: z.coerce.number().int().min(1).default(60),
  /** Sockets one user may hold open on one node. */
  MAX_SOCKETS_PER_USER: z.coerce.number().int().min(1).default(20),
  /**
   * Comma-separated browser origins allowed to connect (the `Origin` header of the WebSocket
   * handshake), e.g. `https://app.example.com`. Unset: CLERK_AUTHORIZED_PARTIES (the app's own
   * origins, required in production), plus any loopback origin outside production. Requests
   * without an Origin header (native apps, servers), and those whose Origin is the server's own
   * (host and port equal to the Host header, as python-socketio sends), are always allowed:
   * they are not foreign pages, and they authenticate with a token, which a foreign page cannot
   * obtain. Any other origin is refused with connect_error ORIGIN_NOT_ALLOWED.
   */
  CORS_ORIGINS: optionalString.pipe(csv.optional()),
  /**
   * Number of reverse proxies in front of this node whose `X-Forwarded-For` entries are trusted
   * for the client address (per-address limits). 0 (default): the header is ignored and the TCP
   * peer is the client, so a client cannot pick its own address. docker-compose sets 1 (nginx).
   */
  TRUST_PROXY: z.coerce.number().int().min(0).max(10).default(0),
  /** pino log level. Default `info` (`silent` in tests). */
  LOG_LEVEL: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]).optional(),
  /** Folder for local state: embedded Postgres data and development keys. Git-ignored. */
  DATA_DIR: z.string().default(".data"),
  /** Port of the embedded Postgres (development only). Default 54329, clear of a local 5432. */
  EMBEDDED_PG_PORT: z.coerce.number().int().min(1).max(65535).default(54329),
});

export type Env = z.infer<typeof envSchema>;

/** Seed nodes and credentials of a Redis Cluster. */
export interface RedisClusterConfig {
  nodes: { host: string; port: number }[];
  username?: string | undefined;
  password?: string | undefined;
  tls?: boolean | undefined;
}

/** Parses REDIS_CLUSTER_NODES' entries: `host:port` or `redis[s]://[user:pass@]host:port`. */
export function parseClusterNodes(entries: readonly string[]): RedisClusterConfig {
  const out: RedisClusterConfig = { nodes: [] };
  for (const entry of entries) {
    const withScheme = /^[a-z]+:\/\//i.test(entry) ? entry : `redis://${entry}`;
    let url: URL;
    try {
      url = new URL(withScheme);
    } catch {
      throw new ConfigError(`REDIS_CLUSTER_NODES: "${entry}" is not host:port`);
    }
    const port = Number(url.port);
    if (!/^rediss?:$/.test(url.protocol) || !url.hostname || !Number.isInteger(port) || port < 1) {
      throw new ConfigError(
        `REDIS_CLUSTER_NODES: "${entry}" is not host:port (a port is required)`,
      );
    }
    out.nodes.push({ host: url.hostname.replace(/^\[|\]$/g, ""), port });
    if (url.protocol === "rediss:") out.tls = true;
    if (url.username) out.username = decodeURIComponent(url.username);
    if (url.password) out.password = decodeURIComponent(url.password);
  }
  if (out.nodes.length === 0) throw new ConfigError("REDIS_CLUSTER_NODES: no node given");
  return out;
}

/** Typed configuration of one server node. */
export interface Config {
  env: Env["NODE_ENV"];
  /**
   * The environment as read, for the development assistant (docs/assistant.md), which reads its
   * own variables (OPENAI_BASE_URL, …) with its own config module, as it does when run alone.
   */
  source: Readonly<Record<string, string | undefined>>;
  port: number;
  host: string;
  /** Undefined: start the embedded Postgres (never in production). */
  databaseUrl: string | undefined;
  databasePoolSize: number;
  migrateOnStart: boolean;
  redisUrl: string | undefined;
  /** A Redis Cluster instead of one Redis (REDIS_CLUSTER_NODES). */
  redisCluster: RedisClusterConfig | undefined;
  /** The adapter between nodes (REDIS_ADAPTER). */
  redisAdapter: "classic" | "sharded";
  redisKeyPrefix: string;
  /** Milliseconds between the nodes' heartbeats (cluster-monitor.ts). */
  clusterHeartbeatMs: number;
  auth: AuthConfig;
  tokenGraceSeconds: number;
  commandTimeoutMs: number;
  /** Milliseconds from the WebSocket handshake to completed authentication. */
  connectTimeoutMs: number;
  /** How long a client may take to send a request's headers and body. */
  http: HttpTimeouts;
  /** Bytes queued for one connection before it is disconnected as a slow consumer. */
  socketMaxBufferedBytes: number;
  /** SOCKET_COALESCE_WRITES: one system call per connection per tick. */
  socketCoalesceWrites: boolean;
  rateLimits: RateLimitConfig;
  /** Which browser origins may connect. */
  origins: OriginPolicy;
  /** Reverse proxies in front of the node whose X-Forwarded-For entries are trusted. */
  trustProxy: number;
  logLevel: NonNullable<Env["LOG_LEVEL"]>;
  dataDir: string;
  embeddedPgPort: number;
  webhookSigningSecret: string | undefined;
  /** Undefined: the service API is disabled. */
  serviceApiKey: string | undefined;
  streamTimeoutMs: number;
  /** Undefined: no webhooks to the app's backend, and no events are enqueued. */
  appWebhooks: AppWebhookConfig | undefined;
  /** APP_WEBHOOK_THREAD: the delivery runs on a worker thread of its own. */
  appWebhookThread: boolean;
  /** The APP_WEBHOOK_* delivery settings, also when no URL is set (development's assistant). */
  appWebhookTuning: Omit<AppWebhookConfig, "url" | "secret">;
  /** Coalescing window of streamed replies' deltas (0: none). */
  streamFlushMs: number;
}

/** Where and how events are delivered to the app's backend (APP_WEBHOOK_*). */
export interface AppWebhookConfig {
  url: string;
  /** `whsec_…` (Standard Webhooks). */
  secret: string;
  timeoutMs: number;
  retryForSeconds: number;
  retryFirstDelayMs: number;
  retryMaxDelayMs: number;
  concurrency: number;
  nodeTimeoutMs: number;
}

/** How tokens are verified: real Clerk keys, or the locally generated development key. */
export type AuthConfig =
  | {
      mode: "clerk";
      jwtKey: string | undefined;
      secretKey: string | undefined;
      authorizedParties: string[] | undefined;
    }
  | { mode: "development" };

/** Raised for a configuration that cannot work; the message names the variable. */
export class ConfigError extends Error {
  override name = "ConfigError";
}

/** Normalizes a list of origins (`scheme://host[:port]`), naming `variable` when one is not. */
function originList(values: string[], variable: string): string[] {
  return values.map((value) => {
    const origin = normalizeOrigin(value);
    if (!origin) {
      throw new ConfigError(
        `${variable}: "${value}" is not an origin (scheme://host[:port], no path, no wildcard).`,
      );
    }
    return origin;
  });
}

/** What `npm run db:migrate` needs: a database, nothing about auth or the network. */
export interface MigrateConfig {
  env: Env["NODE_ENV"];
  /** Undefined: migrate the embedded development database (never in production). */
  databaseUrl: string | undefined;
  dataDir: string;
  embeddedPgPort: number;
  /** The environment this was read from (the embedded Postgres passes a few variables on). */
  source: Readonly<Record<string, string | undefined>>;
}

const migrateEnvSchema = envSchema.pick({
  NODE_ENV: true,
  DATABASE_URL: true,
  DATA_DIR: true,
  EMBEDDED_PG_PORT: true,
});

/**
 * The configuration of `npm run db:migrate`. Only the variables it uses are read, so migrating
 * a production database needs `DATABASE_URL` and nothing else (no Clerk keys).
 */
export function loadMigrateConfig(source: NodeJS.ProcessEnv = process.env): MigrateConfig {
  const parsed = migrateEnvSchema.safeParse(source);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `  ${i.path.join(".")}: ${i.message}`);
    throw new ConfigError(`Invalid environment:\n${lines.join("\n")}`);
  }
  const e = parsed.data;
  if (e.NODE_ENV === "production" && !e.DATABASE_URL) {
    throw new ConfigError(
      "NODE_ENV=production requires DATABASE_URL: the embedded Postgres is for development only.",
    );
  }
  return {
    env: e.NODE_ENV,
    databaseUrl: e.DATABASE_URL,
    dataDir: e.DATA_DIR,
    embeddedPgPort: e.EMBEDDED_PG_PORT,
    source,
  };
}

export function loadConfig(source: NodeJS.ProcessEnv = process.env): Config {
  const parsed = envSchema.safeParse(source);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `  ${i.path.join(".")}: ${i.message}`);
    throw new ConfigError(`Invalid environment:\n${lines.join("\n")}`);
  }
  const e = parsed.data;
  const production = e.NODE_ENV === "production";
  const hasClerk = Boolean(e.CLERK_JWT_KEY || e.CLERK_SECRET_KEY);

  if (production) {
    if (!hasClerk) {
      throw new ConfigError(
        "NODE_ENV=production requires CLERK_JWT_KEY (or CLERK_SECRET_KEY): development auth is refused in production.",
      );
    }
    if (!e.CLERK_AUTHORIZED_PARTIES?.length) {
      throw new ConfigError(
        "NODE_ENV=production requires CLERK_AUTHORIZED_PARTIES (comma-separated origins allowed in the token's azp).",
      );
    }
    if (!e.DATABASE_URL) {
      throw new ConfigError(
        "NODE_ENV=production requires DATABASE_URL: the embedded Postgres is for development only.",
      );
    }
  }
  if (
    e.CLERK_WEBHOOK_SIGNING_SECRET &&
    !/^(whsec_)?[A-Za-z0-9+/]{16,}={0,2}$/.test(e.CLERK_WEBHOOK_SIGNING_SECRET.trim())
  ) {
    throw new ConfigError(
      "CLERK_WEBHOOK_SIGNING_SECRET must be the signing secret from the Clerk Dashboard (whsec_ followed by base64).",
    );
  }
  if (e.APP_WEBHOOK_URL && !e.APP_WEBHOOK_SECRET) {
    throw new ConfigError(
      "APP_WEBHOOK_URL requires APP_WEBHOOK_SECRET (whsec_ followed by base64; e.g. whsec_$(openssl rand -base64 32)).",
    );
  }
  if (
    e.APP_WEBHOOK_SECRET &&
    !/^whsec_[A-Za-z0-9+/]{16,}={0,2}$/.test(e.APP_WEBHOOK_SECRET.trim())
  ) {
    throw new ConfigError(
      "APP_WEBHOOK_SECRET must be whsec_ followed by base64 (at least 12 bytes; e.g. whsec_$(openssl rand -base64 32)).",
    );
  }
  if (e.APP_WEBHOOK_NODE_TIMEOUT_MS <= e.APP_WEBHOOK_TIMEOUT_MS) {
    throw new ConfigError(
      "APP_WEBHOOK_NODE_TIMEOUT_MS must exceed APP_WEBHOOK_TIMEOUT_MS: a live node's delivery must end before its chats are taken over.",
    );
  }
  if (e.REDIS_URL && e.REDIS_CLUSTER_NODES) {
    throw new ConfigError(
      "REDIS_URL and REDIS_CLUSTER_NODES are exclusive: set REDIS_URL for one Redis, REDIS_CLUSTER_NODES for a Redis Cluster.",
    );
  }
  const redisCluster = e.REDIS_CLUSTER_NODES ? parseClusterNodes(e.REDIS_CLUSTER_NODES) : undefined;
  if (e.CLERK_JWT_KEY && !e.CLERK_JWT_KEY.includes("BEGIN PUBLIC KEY")) {
    throw new ConfigError("CLERK_JWT_KEY must be a PEM public key (-----BEGIN PUBLIC KEY-----).");
  }
  // Safe without configuration: the app's own origins (the token's authorized parties), and
  // loopback only for local development.
  const origins: OriginPolicy = {
    allowed: e.CORS_ORIGINS
      ? originList(e.CORS_ORIGINS, "CORS_ORIGINS")
      : originList(
          e.CLERK_AUTHORIZED_PARTIES ?? [],
          "CLERK_AUTHORIZED_PARTIES (CORS_ORIGINS is unset)",
        ),
    loopback: !production,
  };

  return {
    source,
    env: e.NODE_ENV,
    port: e.PORT,
    host: e.HOST ?? (production ? "0.0.0.0" : "127.0.0.1"),
    databaseUrl: e.DATABASE_URL,
    databasePoolSize: e.DATABASE_POOL_SIZE,
    migrateOnStart: e.MIGRATE_ON_START,
    redisUrl: e.REDIS_URL,
    redisCluster,
    redisAdapter: e.REDIS_ADAPTER,
    redisKeyPrefix: e.REDIS_KEY_PREFIX,
    clusterHeartbeatMs: e.CLUSTER_HEARTBEAT_MS,
    auth: hasClerk
      ? {
          mode: "clerk",
          jwtKey: e.CLERK_JWT_KEY?.replace(/\\n/g, "\n"),
          secretKey: e.CLERK_SECRET_KEY,
          authorizedParties: e.CLERK_AUTHORIZED_PARTIES,
        }
      : { mode: "development" },
    tokenGraceSeconds: e.TOKEN_GRACE_SECONDS,
    commandTimeoutMs: e.COMMAND_TIMEOUT_MS,
    connectTimeoutMs: e.CONNECT_TIMEOUT_MS,
    http: { headersTimeoutMs: e.HTTP_HEADERS_TIMEOUT_MS, bodyTimeoutMs: e.HTTP_BODY_TIMEOUT_MS },
    socketMaxBufferedBytes: e.SOCKET_MAX_BUFFERED_BYTES,
    socketCoalesceWrites: e.SOCKET_COALESCE_WRITES,
    rateLimits: {
      messagesPerWindow: e.RATE_LIMIT_MESSAGES,
      // Free tier defaults; RATE_LIMIT_TIERS may override them (resolveTiers in rate-limits.ts).
      chatCreatesPerMinute: 20,
      chatEditsPerMinute: 60,
      tiers: e.RATE_LIMIT_TIERS,
      messageWindowSeconds: e.RATE_LIMIT_MESSAGE_WINDOW_SECONDS,
      connectionsPerMinute: e.RATE_LIMIT_CONNECTIONS_PER_MINUTE,
      maxSocketsPerUser: e.MAX_SOCKETS_PER_USER,
      connectionsPerAddressPerMinute: e.RATE_LIMIT_CONNECTIONS_PER_IP_PER_MINUTE,
      commandsPerSecond: e.RATE_LIMIT_COMMANDS_PER_SECOND,
      commandBurst: e.RATE_LIMIT_COMMAND_BURST,
    },
    origins,
    trustProxy: e.TRUST_PROXY,
    logLevel: e.LOG_LEVEL ?? (e.NODE_ENV === "test" ? "silent" : "info"),
    dataDir: e.DATA_DIR,
    embeddedPgPort: e.EMBEDDED_PG_PORT,
    webhookSigningSecret: e.CLERK_WEBHOOK_SIGNING_SECRET?.trim(),
    serviceApiKey: e.SERVICE_API_KEY,
    streamTimeoutMs: e.SERVICE_STREAM_TIMEOUT_MS,
    appWebhookThread: e.APP_WEBHOOK_THREAD,
    appWebhookTuning: {
      timeoutMs: e.APP_WEBHOOK_TIMEOUT_MS,
      retryForSeconds: e.APP_WEBHOOK_RETRY_FOR_SECONDS,
      retryFirstDelayMs: e.APP_WEBHOOK_RETRY_FIRST_DELAY_MS,
      retryMaxDelayMs: Math.max(
        e.APP_WEBHOOK_RETRY_MAX_DELAY_MS,
        e.APP_WEBHOOK_RETRY_FIRST_DELAY_MS,
      ),
      concurrency: e.APP_WEBHOOK_CONCURRENCY,
      nodeTimeoutMs: e.APP_WEBHOOK_NODE_TIMEOUT_MS,
    },
    appWebhooks:
      e.APP_WEBHOOK_URL && e.APP_WEBHOOK_SECRET
        ? {
            url: e.APP_WEBHOOK_URL,
            secret: e.APP_WEBHOOK_SECRET.trim(),
            timeoutMs: e.APP_WEBHOOK_TIMEOUT_MS,
            retryForSeconds: e.APP_WEBHOOK_RETRY_FOR_SECONDS,
            retryFirstDelayMs: e.APP_WEBHOOK_RETRY_FIRST_DELAY_MS,
            retryMaxDelayMs: Math.max(
              e.APP_WEBHOOK_RETRY_MAX_DELAY_MS,
              e.APP_WEBHOOK_RETRY_FIRST_DELAY_MS,
            ),
            concurrency: e.APP_WEBHOOK_CONCURRENCY,
            nodeTimeoutMs: e.APP_WEBHOOK_NODE_TIMEOUT_MS,
          }
        : undefined,
    streamFlushMs: e.STREAM_FLUSH_MS,
  };
}

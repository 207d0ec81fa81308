/**
 * Entry point: `npm start`. Builds the real dependencies from the environment and starts one
 * node. With no configuration it runs the embedded default: an embedded Postgres, the
 * in-memory adapter and development auth.
 */
import { createServer } from "node:http";
import { AssistantConfigError } from "../../assistant/config.js";
import { type DevAssistant, startDevAssistant } from "../../assistant/index.js";
import { createApplication } from "./app.js";
import { loadOrCreateDevKeys, mintSessionToken } from "./auth/dev-keys.js";
import { createClerkVerifier } from "./auth/token-verifier.js";
import { ConfigError, loadConfig } from "./config.js";
import { createDatabase } from "./db/client.js";
import { type EmbeddedDatabase, startEmbeddedPostgres } from "./db/embedded-postgres.js";
import { runMigrations } from "./db/migrate.js";
import { createDemoHandler } from "./http/demo.js";
import { httpServerOptions } from "./http/server-options.js";
import { createLogger } from "./logger.js";
import { Metrics } from "./metrics.js";
import { installProcessHandlers } from "./process-handlers.js";
import { createRedisAdapter } from "./redis-adapter.js";
import { RateLimits } from "./services/rate-limits.js";

async function main(): Promise<void> {
  let config: ReturnType<typeof loadConfig>;
  try {
    config = loadConfig();
  } catch (e) {
    if (e instanceof ConfigError) {
      console.error(`Configuration error: ${e.message}`);
      process.exit(1);
    }
    throw e;
  }
  const logger = createLogger(config.logLevel);
  installProcessHandlers(logger);

  let embedded: EmbeddedDatabase | undefined;
  let databaseUrl = config.databaseUrl;
  if (!databaseUrl) {
    logger.info({ dataDir: config.dataDir }, "no DATABASE_URL: starting the embedded Postgres");
    embedded = await startEmbeddedPostgres(config, (line) =>
      logger.debug({ postgres: line.trim() }),
    );
    databaseUrl = embedded.url;
  }
  // Bringing the schema up to date is a no-op when it is current; an advisory lock makes nodes
  // that start together take turns. MIGRATE_ON_START=false leaves it to `npm run db:migrate`.
  if (config.migrateOnStart) await runMigrations(databaseUrl);
  const database = createDatabase(databaseUrl, { max: config.databasePoolSize });

  let verifier: ReturnType<typeof createClerkVerifier>;
  let mintDevToken: ((userId: string, authorizedParty: string) => Promise<string>) | undefined;
  if (config.auth.mode === "clerk") {
    verifier = createClerkVerifier(config.auth);
  } else {
    const keys = await loadOrCreateDevKeys(config.dataDir);
    verifier = createClerkVerifier({ jwtKey: keys.publicKeyPem });
    mintDevToken = (userId, authorizedParty) =>
      mintSessionToken(keys.privateKeyPem, userId, { ttlSeconds: 3600, authorizedParty });
    logger.warn("development auth: tokens are signed with a local key (npm run token -- <userId>)");
  }

  const metrics = new Metrics();
  const redisTarget = config.redisCluster
    ? { cluster: config.redisCluster }
    : config.redisUrl
      ? { url: config.redisUrl }
      : undefined;
  const redis = redisTarget
    ? createRedisAdapter(
        redisTarget,
        config.redisKeyPrefix,
        logger,
        (kind) => metrics.adapterErrors.inc({ kind }),
        { heartbeatMs: config.clusterHeartbeatMs, kind: config.redisAdapter },
      )
    : undefined;
  const rateLimits = new RateLimits(config.rateLimits, redis?.client, config.redisKeyPrefix);

  // Development: the built-in assistant (docs/assistant.md) receives the webhooks and replies,
  // so the demo shows the whole loop with no configuration. Never in production; not when
  // APP_WEBHOOK_URL names the app's own backend.
  let devAssistant: DevAssistant | undefined;
  try {
    if (config.env !== "production") {
      devAssistant = await startDevAssistant(
        config.source,
        config.serviceApiKey,
        logger.child({ app: "assistant" }),
      );
    }
  } catch (e) {
    if (e instanceof AssistantConfigError) {
      console.error(`Configuration error (assistant): ${e.message}`);
      process.exit(1);
    }
    throw e;
  }

  // The app's backend (APP_WEBHOOK_URL), or in development the built-in assistant.
  const webhooks =
    config.appWebhooks ??
    (devAssistant ? { ...config.appWebhookTuning, ...devAssistant.webhook } : undefined);

  const httpServer = createServer(httpServerOptions(config.http));
  const app = createApplication(httpServer, {
    database,
    verifier,
    logger,
    tokenGraceSeconds: config.tokenGraceSeconds,
    commandTimeoutMs: config.commandTimeoutMs,
    connectTimeoutMs: config.connectTimeoutMs,
    httpBodyTimeoutMs: config.http.bodyTimeoutMs,
    socketMaxBufferedBytes: config.socketMaxBufferedBytes,
    coalesceWrites: config.socketCoalesceWrites,
    rateLimits,
    origins: config.origins,
    trustProxy: config.trustProxy,
    metrics,
    mintDevToken,
    // The demo page needs dev tokens, so it exists exactly when they do.
    demo: mintDevToken ? await createDemoHandler() : undefined,
    adapter: redis?.adapter,
    clusterMonitor: redis?.monitor,
    redis: redis ? { client: redis.client, keyPrefix: config.redisKeyPrefix } : undefined,
    serviceApiKey: devAssistant?.serviceApiKey ?? config.serviceApiKey,
    webhookSigningSecret: config.webhookSigningSecret,
    streamTimeoutMs: config.streamTimeoutMs,
    appWebhooks: webhooks
      ? { config: webhooks, databaseUrl, thread: config.appWebhookThread }
      : undefined,
    streamFlushMs: config.streamFlushMs,
  });
  // The webhook delivery runs (and enqueueing is on) before the first message can arrive.
  await app.ready;
  await new Promise<void>((resolve) => httpServer.listen(config.port, config.host, resolve));
  const address = httpServer.address();
  const port = typeof address === "object" && address ? address.port : config.port;
  logger.info(
    {
      host: config.host,
      port,
      auth: config.auth.mode,
      serviceApi: Boolean(config.serviceApiKey ?? devAssistant),
      clerkWebhooks: Boolean(config.webhookSigningSecret),
      appWebhooks: webhooks
        ? config.appWebhooks
          ? "APP_WEBHOOK_URL"
          : "built-in assistant"
        : false,
    },
    `listening on http://${config.host}:${port}`,
  );
  devAssistant?.connect(`http://${loopbackHost(config.host)}:${port}`);

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, "shutting down");
    const force = setTimeout(() => process.exit(1), 10_000);
    force.unref();
    // First, while the server still answers: replies in progress are failed, not left open.
    await devAssistant?.close();
    await app.close();
    await redis?.close();
    await database.close();
    await embedded?.stop();
    process.exit(0);
  };
  process.on("SIGTERM", () => void stop("SIGTERM"));
  process.on("SIGINT", () => void stop("SIGINT"));
}

/** How this process reaches its own server: a wildcard address is reached on loopback. */
function loopbackHost(host: string): string {
  if (host === "0.0.0.0" || host === "") return "127.0.0.1";
  if (host === "::") return "[::1]";
  return host.includes(":") ? `[${host}]` : host;
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});

/**
 * Entry point: `npm start`. Builds the real dependencies from the environment and starts one
 * node. With no configuration it runs the embedded default: an embedded Postgres, the
 * in-memory adapter and development auth.
 */
import { createServer } from "node:http";
import { createApplication } from "./app.js";
import { loadOrCreateDevKeys, mintSessionToken } from "./auth/dev-keys.js";
import { createClerkVerifier } from "./auth/token-verifier.js";
import { ConfigError, loadConfig } from "./config.js";
import { createDatabase } from "./db/client.js";
import { type EmbeddedDatabase, startEmbeddedPostgres } from "./db/embedded-postgres.js";
import { runMigrations } from "./db/migrate.js";
import { createDemoHandler } from "./http/demo.js";
import { createLogger } from "./logger.js";
import { Metrics } from "./metrics.js";
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
  let mintDevToken: ((userId: string) => Promise<string>) | undefined;
  if (config.auth.mode === "clerk") {
    verifier = createClerkVerifier(config.auth);
  } else {
    const keys = await loadOrCreateDevKeys(config.dataDir);
    verifier = createClerkVerifier({ jwtKey: keys.publicKeyPem });
    mintDevToken = (userId) => mintSessionToken(keys.privateKeyPem, userId, { ttlSeconds: 3600 });
    logger.warn("development auth: tokens are signed with a local key (npm run token -- <userId>)");
  }

  const metrics = new Metrics();
  const redis = config.redisUrl
    ? createRedisAdapter(config.redisUrl, config.redisKeyPrefix, logger, (kind) =>
        metrics.adapterErrors.inc({ kind }),
      )
    : undefined;
  const rateLimits = new RateLimits(config.rateLimits, redis?.client, config.redisKeyPrefix);

  const httpServer = createServer();
  const app = createApplication(httpServer, {
    database,
    verifier,
    logger,
    tokenGraceSeconds: config.tokenGraceSeconds,
    commandTimeoutMs: config.commandTimeoutMs,
    rateLimits,
    origins: config.origins,
    trustProxy: config.trustProxy,
    metrics,
    mintDevToken,
    // The demo page needs dev tokens, so it exists exactly when they do.
    demo: mintDevToken ? await createDemoHandler() : undefined,
    adapter: redis?.adapter,
    redis: redis ? { client: redis.client, keyPrefix: config.redisKeyPrefix } : undefined,
    serviceApiKey: config.serviceApiKey,
    webhookSigningSecret: config.webhookSigningSecret,
    streamTimeoutMs: config.streamTimeoutMs,
    streamFlushMs: config.streamFlushMs,
  });
  await new Promise<void>((resolve) => httpServer.listen(config.port, config.host, resolve));
  const address = httpServer.address();
  const port = typeof address === "object" && address ? address.port : config.port;
  logger.info(
    {
      host: config.host,
      port,
      auth: config.auth.mode,
      serviceApi: Boolean(config.serviceApiKey),
      clerkWebhooks: Boolean(config.webhookSigningSecret),
    },
    `listening on http://${config.host}:${port}`,
  );

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, "shutting down");
    const force = setTimeout(() => process.exit(1), 10_000);
    force.unref();
    await app.close();
    await redis?.close();
    await database.close();
    await embedded?.stop();
    process.exit(0);
  };
  process.on("SIGTERM", () => void stop("SIGTERM"));
  process.on("SIGINT", () => void stop("SIGINT"));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});

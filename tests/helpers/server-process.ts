/**
 * A real server node as a child process (`node --import tsx server/src/main.ts`, what
 * `npm start` runs), for tests that need a process of its own: production mode, process-level
 * handlers, SIGKILL. No vitest imports, so scripts (scripts/chaos/) use it too.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";

/** The repository's root (the server is started from there). */
const root = fileURLToPath(new URL("../../", import.meta.url));

export interface ServerProcessOptions {
  /** Environment on top of `process.env` (DATABASE_URL, CLERK_*, …); PORT defaults to 0. */
  env: Record<string, string>;
  /** Milliseconds to wait for the "listening" log line; default 60 s (a loaded machine). */
  startTimeoutMs?: number;
  /** Characters of output kept (the latest); default 1 MB, so a long run's logs stay bounded. */
  maxOutputChars?: number;
}

export interface ServerProcess {
  readonly child: ChildProcess;
  /** The port it listens on (read from its log). */
  readonly port: number;
  readonly url: string;
  /** What it printed so far (stdout and stderr; the latest `maxOutputChars`). */
  output(): string;
  /** How it ended, once it has. */
  readonly exit: { code: number | null; signal: string | null } | undefined;
  /** Resolves once the process has exited. */
  readonly exited: Promise<void>;
  /** SIGKILL (a crash): resolves once it has exited. */
  kill(): Promise<void>;
  /** SIGTERM (a drain), then SIGKILL after `timeoutMs`: resolves once it has exited. */
  stop(timeoutMs?: number): Promise<void>;
}

/** Starts a node and resolves once it logs the port it listens on (rejects if it exits first). */
export async function startServerProcess(options: ServerProcessOptions): Promise<ServerProcess> {
  const child = spawn(process.execPath, ["--import", "tsx", "server/src/main.ts"], {
    cwd: root,
    env: { ...process.env, PORT: "0", ...options.env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  let exit: ServerProcess["exit"];
  const exited = new Promise<void>((resolve) => {
    child.once("exit", (code, signal) => {
      exit = { code, signal };
      resolve();
    });
  });
  const port = await new Promise<number>((resolve, reject) => {
    const timeoutMs = options.startTimeoutMs ?? 60_000;
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`the server did not start within ${timeoutMs} ms:\n${output}`));
    }, timeoutMs);
    const maxOutput = options.maxOutputChars ?? 1_000_000;
    const onData = (d: Buffer) => {
      output += d;
      if (output.length > maxOutput) output = output.slice(-maxOutput);
      const m = /"port":(\d+)/.exec(output);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    };
    child.stdout?.on("data", onData);
    child.stderr?.on("data", onData);
    void exited.then(() => {
      clearTimeout(timer);
      reject(new Error(`the server exited before listening (${JSON.stringify(exit)}):\n${output}`));
    });
  });
  const signalAndWait = async (signal: NodeJS.Signals, timeoutMs?: number) => {
    if (exit) return;
    child.kill(signal);
    if (timeoutMs === undefined) return exited;
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    await exited;
    clearTimeout(timer);
  };
  return {
    child,
    port,
    url: `http://127.0.0.1:${port}`,
    output: () => output,
    get exit() {
      return exit;
    },
    exited,
    kill: () => signalAndWait("SIGKILL"),
    stop: (timeoutMs = 20_000) => signalAndWait("SIGTERM", timeoutMs),
  };
}

/**
 * A private redis-server child process on a free loopback port, for fault tests that kill and
 * restart Redis (never the shared one on 6379). No persistence: a restart starts empty, as a
 * Redis without AOF/RDB does after a crash.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { type AddressInfo, createConnection, createServer } from "node:net";

/** A free loopback port: bind port 0, read it, release it. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address() as AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

/** Resolves true when a redis-server answers PING on `port` within `timeoutMs`. */
export function ping(port: number, timeoutMs = 500): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createConnection({ host: "127.0.0.1", port });
    let data = "";
    const done = (ok: boolean) => {
      clearTimeout(timer);
      s.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    s.once("connect", () => s.write("PING\r\n"));
    s.on("data", (d) => {
      data += d.toString();
      if (data.includes("+PONG")) done(true);
    });
    s.once("error", () => done(false));
  });
}

export class RedisProcess {
  private child: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();
  output = "";

  constructor(readonly port: number) {}

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  /** Started and not (yet) killed or exited. */
  get running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && !this.child.killed;
  }

  /** Starts it and resolves once it answers PING (fails loudly after 10 s). */
  async start(): Promise<void> {
    const args = ["--port", String(this.port), "--bind", "127.0.0.1", "--save", ""];
    const child = spawn("redis-server", [...args, "--appendonly", "no", "--loglevel", "warning"], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.child = child;
    this.exited = new Promise((resolve) => {
      child.once("exit", () => resolve());
      child.once("error", (err) => {
        this.output += `spawn error: ${err}\n`;
        resolve();
      });
    });
    child.stdout?.on("data", (d) => {
      this.output += d;
    });
    child.stderr?.on("data", (d) => {
      this.output += d;
    });
    const deadline = Date.now() + 10_000;
    while (!(await ping(this.port))) {
      if (child.exitCode !== null || Date.now() > deadline) {
        throw new Error(`redis-server did not start on ${this.port}:\n${this.output}`);
      }
      await new Promise((r) => setTimeout(r, 25));
    }
  }

  /** SIGKILL: clients see their connections drop. Resolves once it has exited. */
  async kill(): Promise<void> {
    if (this.child && this.child.exitCode === null) this.child.kill("SIGKILL");
    await this.exited;
    this.child = undefined;
  }
}

/**
 * A private redis-server child process on a free loopback port, for fault tests that kill and
 * restart Redis (never the shared one on 6379). No persistence: a restart starts empty, as a
 * Redis without AOF/RDB does after a crash.
 *
 * RedisClusterProcess: a real Redis Cluster of such processes (three masters, three replicas by
 * default), created with `redis-cli --cluster create`, for the cluster suites and the failover
 * test. Start one per test file (it takes about two seconds) and stop it in afterAll.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { type AddressInfo, createConnection, createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

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

  /** `extraArgs`: more redis-server arguments (cluster mode); `cwd`: where it keeps its files. */
  constructor(
    readonly port: number,
    private readonly extraArgs: string[] = [],
    private readonly cwd?: string,
  ) {}

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
    const child = spawn(
      "redis-server",
      [...args, "--appendonly", "no", "--loglevel", "warning", ...this.extraArgs],
      { stdio: ["ignore", "pipe", "pipe"], ...(this.cwd ? { cwd: this.cwd } : {}) },
    );
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

/** One node of a RedisClusterProcess, with its role as the cluster last reported it. */
export interface ClusterMember {
  process: RedisProcess;
  port: number;
}

/** `redis-cli -p <port> <args…>`, its output trimmed. */
async function cli(port: number, ...args: string[]): Promise<string> {
  const { stdout } = await run("redis-cli", ["-h", "127.0.0.1", "-p", String(port), ...args]);
  return stdout.trim();
}

/**
 * A Redis Cluster on free loopback ports. `nodeTimeoutMs` is the cluster's node timeout: a
 * killed master's replica takes over about that long after (short, so tests fail over fast).
 */
export class RedisClusterProcess {
  readonly members: ClusterMember[] = [];
  private dir = "";

  constructor(
    private readonly options: { masters?: number; replicas?: number; nodeTimeoutMs?: number } = {},
  ) {}

  /** Seed nodes for REDIS_CLUSTER_NODES / the Cluster client: every node. */
  get nodes(): { host: string; port: number }[] {
    return this.members.map((m) => ({ host: "127.0.0.1", port: m.port }));
  }

  async start(): Promise<void> {
    const masters = this.options.masters ?? 3;
    const replicas = this.options.replicas ?? 1;
    this.dir = await mkdtemp(path.join(tmpdir(), "redis-cluster-"));
    const count = masters * (1 + replicas);
    for (let i = 0; i < count; i++) {
      const port = await freePort();
      const args = [
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        `nodes-${port}.conf`,
        "--cluster-node-timeout",
        String(this.options.nodeTimeoutMs ?? 1000),
        // A replica takes over however long it was cut off (tests kill masters at will).
        "--cluster-replica-validity-factor",
        "0",
      ];
      const process = new RedisProcess(port, args, this.dir);
      this.members.push({ process, port });
    }
    await Promise.all(this.members.map((m) => m.process.start()));
    await run("redis-cli", [
      "--cluster",
      "create",
      ...this.members.map((m) => `127.0.0.1:${m.port}`),
      "--cluster-replicas",
      String(replicas),
      "--cluster-yes",
    ]);
    await this.waitHealthy();
  }

  /** Waits until every live node says the cluster is ok and every slot has a master. */
  async waitHealthy(timeoutMs = 20_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let last = "";
    for (;;) {
      const states = await Promise.all(
        this.live().map((m) => cli(m.port, "cluster", "info").catch((e) => String(e))),
      );
      if (
        states.every((s) => s.includes("cluster_state:ok") && s.includes("cluster_slots_ok:16384"))
      )
        return;
      last = states.join("\n");
      if (Date.now() > deadline) throw new Error(`redis cluster not healthy:\n${last}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  private live(): ClusterMember[] {
    return this.members.filter((m) => m.process.running);
  }

  /** The ports of the current masters (as a live node reports them). */
  async masters(): Promise<number[]> {
    const from = this.live()[0];
    if (!from) throw new Error("no live cluster node");
    const lines = (await cli(from.port, "cluster", "nodes")).split("\n");
    return lines
      .filter((l) => /\bmaster\b/.test(l) && !/\bfail\b/.test(l))
      .map((l) => Number(l.split(" ")[1]?.split("@")[0]?.split(":")[1]));
  }

  /** The port of the master that holds `key`'s slot (from CLUSTER NODES' slot ranges). */
  async masterOf(key: string): Promise<number> {
    const from = this.live()[0];
    if (!from) throw new Error("no live cluster node");
    const slot = Number(await cli(from.port, "cluster", "keyslot", key));
    for (const line of (await cli(from.port, "cluster", "nodes")).split("\n")) {
      const fields = line.split(" ");
      if (!/\bmaster\b/.test(fields[2] ?? "") || /\bfail\b/.test(fields[2] ?? "")) continue;
      for (const range of fields.slice(8)) {
        const [start, end = start] = range.split("-").map(Number);
        if (start !== undefined && end !== undefined && slot >= start && slot <= end) {
          return Number(fields[1]?.split("@")[0]?.split(":")[1]);
        }
      }
    }
    throw new Error(`no master found for slot ${slot}`);
  }

  /** SIGKILLs the node on `port` and waits until a replica took over its slots. */
  async failOver(port: number): Promise<void> {
    const member = this.members.find((m) => m.port === port);
    if (!member) throw new Error(`no cluster node on ${port}`);
    const masters = (await this.masters()).length;
    await member.process.kill();
    // The cluster notices after its node timeout, then a replica is elected for the slots.
    const deadline = Date.now() + 20_000;
    for (;;) {
      const now = await this.masters().catch(() => [port]);
      if (!now.includes(port) && now.length === masters) break;
      if (Date.now() > deadline) throw new Error(`no replica took over from ${port}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    await this.waitHealthy();
  }

  async stop(): Promise<void> {
    await Promise.all(this.members.map((m) => m.process.kill()));
    if (this.dir) await rm(this.dir, { recursive: true, force: true });
  }
}

/**
 * The chaos harness: several real server nodes (processes, production mode) over a private
 * Redis, real SDK devices, and a seeded schedule of operations and faults (node SIGKILLs, a
 * Redis SIGKILL, bursts of `pg_terminate_backend`). Then the faults stop, everything is brought
 * back, and the check runs WITHOUT forcing any reconnect: every live device must equal the
 * database (sidebar and open chats), and every acked message must be stored exactly once with
 * `seq` gap-free. The same seed gives the same schedule (timing under load still varies).
 *
 * Used by `npm run chaos` (scripts/chaos/run.ts, long runs) and tests/chaos/chaos.test.ts (a
 * short seed in `npm test`). docs/chaos.md describes it.
 */
import { generateKeyPairSync, randomUUID } from "node:crypto";
import postgres from "postgres";
import {
  type ChatClient,
  createChatClient,
  memoryOutboxStorage,
  type OutboxStorage,
} from "../../client-sdk/src/index.js";
import { mintSessionToken } from "../../server/src/auth/dev-keys.js";
import { APPLICATION_NAME } from "../../server/src/db/client.js";
import { freePort, RedisProcess } from "../../tests/helpers/redis-process.js";
import { type ServerProcess, startServerProcess } from "../../tests/helpers/server-process.js";
import { type DatabaseState, diffDevice, readDatabase, type StoredMessage } from "./check.js";

export interface ChaosOptions {
  seed: number;
  /** Milliseconds of operations and faults (the setup and the settling come on top). */
  durationMs: number;
  /** A migrated database with no chats; the nodes and the check use it. */
  databaseUrl: string;
  /** Any database of the same cluster, as a superuser: terminates the nodes' connections. */
  adminUrl: string;
  nodes?: number;
  users?: number;
  devicesPerUser?: number;
  /** How long the devices may take to converge once the faults stopped (default 30 s). */
  settleTimeoutMs?: number;
  /** Progress lines (default: none). */
  log?: (line: string) => void;
}

export interface ChaosReport {
  seed: number;
  ok: boolean;
  /** Operations issued, by kind. */
  operations: Record<string, number>;
  /** Faults injected, by kind. */
  faults: Record<string, number>;
  /** Messages acked to a device or to the service API. */
  acked: number;
  /** Milliseconds from the end of the faults until the devices equalled the database. */
  convergedAfterMs: number | null;
  /** What was wrong (empty when ok): device-vs-database diffs, then data errors. */
  problems: string[];
  /** The faults and phases, with milliseconds since the start of the chaos phase. */
  timeline: string[];
  wallMs: number;
}

/** mulberry32: a small seeded PRNG; the whole schedule comes from it. */
export function prng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next,
    int: (lo: number, hi: number) => lo + Math.floor(next() * (hi - lo + 1)),
    pick: <T>(xs: readonly T[]): T => xs[Math.floor(next() * xs.length)] as T,
    chance: (p: number) => next() < p,
  };
}
type Rng = ReturnType<typeof prng>;

const AUTHORIZED_PARTY = "http://localhost:3000";
const SERVICE_KEY = "chaos-service-key-0123456789abcdef0123456789";
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls `check` until it returns true or `timeoutMs` passes (then returns false). */
async function pollUntil(
  check: () => boolean | Promise<boolean>,
  timeoutMs: number,
  everyMs = 100,
) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return true;
    if (Date.now() > deadline) return false;
    await sleep(everyMs);
  }
}

/** One server node; restarted on the same port after a kill, so its devices come back to it. */
class Node {
  proc: ServerProcess | undefined;
  constructor(
    readonly index: number,
    readonly port: number,
    private readonly env: Record<string, string>,
  ) {}
  get url() {
    return `http://127.0.0.1:${this.port}`;
  }
  get up() {
    return this.proc !== undefined && this.proc.exit === undefined;
  }
  async start() {
    this.proc = await startServerProcess({ env: { ...this.env, PORT: String(this.port) } });
  }
  async kill() {
    await this.proc?.kill();
  }
  async stop() {
    await this.proc?.stop(10_000);
  }
}

interface Device {
  name: string;
  userId: string;
  node: Node;
  client: ChatClient;
  storage: OutboxStorage;
  /** Chats this device has open (openChat resolved, not closed since). */
  open: Set<string>;
  busy: boolean;
  networkUp: boolean;
  /** What happened to its connection (ms since the chaos phase began), for the diff. */
  history: string[];
}

export async function runChaos(options: ChaosOptions): Promise<ChaosReport> {
  const started = Date.now();
  const log = options.log ?? (() => {});
  const nodeCount = options.nodes ?? 3;
  const userCount = options.users ?? 3;
  const devicesPerUser = options.devicesPerUser ?? 3;
  const operations: Record<string, number> = {};
  const faults: Record<string, number> = {};
  const count = (into: Record<string, number>, k: string) => {
    into[k] = (into[k] ?? 0) + 1;
  };
  const problems: string[] = [];
  const timeline: string[] = [];
  let chaosStart = Date.now();
  const mark = (what: string) => {
    const line = `+${Date.now() - chaosStart} ms ${what}`;
    timeline.push(line);
    log(line);
  };
  /** Acked messages: chatId -> clientId -> content. */
  const acked = new Map<string, Map<string, string>>();
  let ackedCount = 0;
  const ack = (chatId: string, clientId: string, content: string) => {
    const m = acked.get(chatId) ?? new Map<string, string>();
    acked.set(chatId, m);
    const prev = m.get(clientId);
    if (prev !== undefined && prev !== content) {
      problems.push(`acked twice with other content: ${chatId}/${clientId}`);
    }
    if (prev === undefined) ackedCount++;
    m.set(clientId, content);
  };

  const keys = generateKeyPairSync("rsa", {
    modulusLength: 2048,
    publicKeyEncoding: { type: "spki", format: "pem" },
    privateKeyEncoding: { type: "pkcs8", format: "pem" },
  });
  const redis = new RedisProcess(await freePort());
  const admin = postgres(options.adminUrl, { max: 1, onnotice: () => {}, connect_timeout: 5 });
  const sql = postgres(options.databaseUrl, { max: 2, onnotice: () => {}, connect_timeout: 5 });
  const databaseName = new URL(options.databaseUrl).pathname.slice(1);
  const nodes: Node[] = [];
  const devices: Device[] = [];
  const tasks = new Set<Promise<unknown>>();
  const track = (p: Promise<unknown>) => {
    const t = p.catch(() => {}).finally(() => tasks.delete(t));
    tasks.add(t);
  };

  try {
    await redis.start();
    const env: Record<string, string> = {
      NODE_ENV: "production",
      HOST: "127.0.0.1",
      DATABASE_URL: options.databaseUrl,
      DATABASE_POOL_SIZE: "4",
      MIGRATE_ON_START: "false",
      REDIS_URL: redis.url,
      REDIS_KEY_PREFIX: `chaos${options.seed}`,
      CLERK_JWT_KEY: keys.publicKey,
      CLERK_AUTHORIZED_PARTIES: AUTHORIZED_PARTY,
      SERVICE_API_KEY: SERVICE_KEY,
      // Faults, not the flood limits, are under test.
      RATE_LIMIT_MESSAGES: "1000000",
      RATE_LIMIT_TIERS: JSON.stringify({
        free: { messages: 1_000_000, chatCreates: 1_000_000, chatEdits: 1_000_000 },
      }),
      RATE_LIMIT_COMMANDS_PER_SECOND: "100000",
      RATE_LIMIT_COMMAND_BURST: "100000",
      RATE_LIMIT_CONNECTIONS_PER_MINUTE: "100000",
      RATE_LIMIT_CONNECTIONS_PER_IP_PER_MINUTE: "1000000",
      MAX_SOCKETS_PER_USER: "1000",
      LOG_LEVEL: "info",
    };
    for (let i = 0; i < nodeCount; i++) nodes.push(new Node(i, await freePort(), env));
    await Promise.all(nodes.map((n) => n.start()));
    log(`nodes up on ${nodes.map((n) => n.port).join(", ")}, redis on ${redis.port}`);

    const users = Array.from({ length: userCount }, (_, u) => `user_chaos_${options.seed}_${u}`);
    const newClient = (userId: string, node: Node, storage: OutboxStorage) =>
      createChatClient({
        url: node.url,
        getToken: () =>
          mintSessionToken(keys.privateKey, userId, { authorizedParty: AUTHORIZED_PARTY }),
        outboxStorage: storage,
        detectNetwork: false,
        commandTimeoutMs: 10_000,
      });
    const watchAcks = (d: Device) => {
      // Absolute times, shown relative to the chaos phase's start (during the setup: negative).
      const at = () => `@${Date.now()}`;
      d.history.push(`${at()} client on node ${d.node.index}`);
      d.client.on("state", (state) => {
        d.history.push(`${at()} ${state}`);
        if (d.history.length > 200) d.history.splice(0, 100);
      });
      d.client.on("connection:resync", () => d.history.push(`${at()} resync`));
      d.client.on("error", ({ error, context }) =>
        d.history.push(`${at()} error (${context}: ${error.code})`),
      );
      d.client.on("outbox", ({ entry }) => {
        if (entry.status === "confirmed" && entry.message) {
          ack(entry.chatId, entry.clientId, entry.content);
        }
      });
    };
    for (const userId of users) {
      for (let k = 0; k < devicesPerUser; k++) {
        const node = nodes[(users.indexOf(userId) + k) % nodeCount] as Node;
        const storage = memoryOutboxStorage();
        const d: Device = {
          name: `${userId}/d${k}`,
          userId,
          node,
          storage,
          client: newClient(userId, node, storage),
          open: new Set(),
          busy: false,
          networkUp: true,
          history: [],
        };
        watchAcks(d);
        devices.push(d);
      }
    }
    const allOnline = () => devices.every((d) => d.client.state === "online");
    if (!(await pollUntil(allOnline, 30_000))) throw new Error("the devices did not connect");
    // Two chats per user to start with.
    for (const userId of users) {
      const d = devices.find((x) => x.userId === userId) as Device;
      for (let i = 0; i < 2; i++) await d.client.createChat({ title: `start ${i}` });
    }

    /** The user's chats as this device's sidebar shows them. */
    const chatsOf = (d: Device) => d.client.sidebar.getSnapshot().chats.map((c) => c.id);
    const upNode = (r: Rng) => {
      const up = nodes.filter((n) => n.up);
      return up.length ? r.pick(up) : undefined;
    };
    const service = async (node: Node, path: string, body: unknown) => {
      const res = await fetch(`${node.url}/service/v1${path}`, {
        method: "POST",
        headers: { authorization: `Bearer ${SERVICE_KEY}`, "content-type": "application/json" },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(8000),
      });
      return { status: res.status, body: (await res.json().catch(() => null)) as unknown };
    };
    /** Posts until a node answers (a node may be down, Redis or Postgres failing): bounded. */
    const serviceRetry = async (r: Rng, path: string, body: unknown, attempts = 30) => {
      let last: unknown;
      for (let i = 0; i < attempts; i++) {
        const node = upNode(r);
        if (node) {
          try {
            const res = await service(node, path, body);
            if (res.status < 500) return res;
            last = res;
          } catch (e) {
            last = e;
          }
        }
        await sleep(100 + 50 * i);
      }
      throw new Error(`service ${path}: ${String(last)}`);
    };
    /** Streams whose finish was not acked yet (finished in the settling phase). */
    const unfinished = new Map<string, { chatId: string; text: string }>();

    let opNo = 0;
    const runOp = async (d: Device, r: Rng) => {
      const n = opNo++;
      const chats = chatsOf(d);
      const chatId = chats.length ? r.pick(chats) : undefined;
      const roll = r.next();
      if (roll < 0.36 && chatId) {
        count(operations, d.networkUp ? "send" : "send offline");
        void d.client.sendMessage({ chatId, content: `m${n} from ${d.name}` });
        return;
      }
      // Another device of the same user, preferably on another node, for the races below.
      const others = devices.filter((x) => x.userId === d.userId && x !== d);
      const other = r.pick(others.filter((x) => x.node !== d.node).concat(others));
      if (roll < 0.4 && chatId && other) {
        // A rename racing a message sent on another node.
        count(operations, "rename racing a send");
        void other.client.sendMessage({ chatId, content: `m${n} from ${other.name} (race)` });
        await d.client.renameChat({ chatId, title: `race ${n}` });
        return;
      }
      if (roll < 0.46 && chats.length < 6) {
        count(operations, "create");
        await d.client.createChat({ title: `chat ${n}` });
        return;
      }
      if (roll < 0.54 && chatId) {
        count(operations, "rename");
        await d.client.renameChat({ chatId, title: `title ${n}` });
        return;
      }
      if (roll < 0.57 && chatId && chats.length > 2) {
        count(operations, "delete");
        d.open.delete(chatId);
        await d.client.deleteChat({ chatId });
        return;
      }
      if (roll < 0.6 && chatId && chats.length > 2 && other) {
        // A delete racing a send on another device and an assistant reply on any node.
        count(operations, "delete racing a send");
        d.open.delete(chatId);
        void other.client.sendMessage({ chatId, content: `m${n} from ${other.name} (race)` });
        const node = upNode(r);
        const clientId = `reply-${n}-${randomUUID()}`;
        const reply = node
          ? service(node, `/users/${d.userId}/chats/${chatId}/messages`, {
              clientId,
              content: `reply ${n} (race)`,
              role: "assistant",
            })
              .then((res) => {
                if (res.status === 200 || res.status === 201)
                  ack(chatId, clientId, `reply ${n} (race)`);
              })
              .catch(() => {})
          : Promise.resolve();
        await Promise.all([d.client.deleteChat({ chatId }).catch(() => {}), reply]);
        return;
      }
      if (roll < 0.69 && chatId && d.networkUp) {
        count(operations, "open");
        try {
          await d.client.openChat({ chatId });
          d.open.add(chatId);
        } catch {
          d.open.delete(chatId);
        }
        return;
      }
      if (roll < 0.73 && d.open.size) {
        count(operations, "close");
        const id = r.pick([...d.open]);
        d.open.delete(id);
        await d.client.closeChat({ chatId: id });
        return;
      }
      if (roll < 0.82 && chatId) {
        count(operations, "service reply");
        const clientId = `reply-${n}-${randomUUID()}`;
        const content = `reply ${n}`;
        const res = await serviceRetry(r, `/users/${d.userId}/chats/${chatId}/messages`, {
          clientId,
          content,
          role: "assistant",
        });
        if (res.status === 200 || res.status === 201) ack(chatId, clientId, content);
        return;
      }
      if (roll < 0.88 && chatId) {
        count(operations, "service stream");
        const streamId = `stream-${n}-${randomUUID()}`;
        const start = await serviceRetry(r, `/users/${d.userId}/chats/${chatId}/streams`, {
          streamId,
        });
        if (start.status !== 201 && start.status !== 200) return;
        unfinished.set(streamId, { chatId, text: "" });
        const chunks = r.int(1, 4);
        let text = "";
        for (let i = 0; i < chunks; i++) {
          const delta = `w${i} `;
          const res = await serviceRetry(r, `/streams/${streamId}/chunks`, { index: i, delta });
          if (res.status !== 200) break;
          text += delta;
          unfinished.set(streamId, { chatId, text });
        }
        const fin = await serviceRetry(r, `/streams/${streamId}/finish`, { content: text || "-" });
        if (fin.status === 200 || fin.status === 201) {
          unfinished.delete(streamId);
          ack(chatId, streamId, text || "-");
        }
        return;
      }
      if (tail) {
        // The tail: devices stay where they are (a reconnect would heal what is under test).
        if (chatId) void d.client.sendMessage({ chatId, content: `m${n} from ${d.name}` });
        count(operations, "send");
        return;
      }
      if (roll < 0.93) {
        // The app reloads behind the load balancer and lands on another node: a new client,
        // same outbox storage, the same chats opened again.
        const target = r.pick(nodes.filter((x) => x !== d.node));
        if (!target) return;
        count(operations, "move device");
        const reopen = [...d.open];
        await d.client.close();
        d.node = target;
        d.client = newClient(d.userId, target, d.storage);
        d.networkUp = true;
        watchAcks(d);
        d.open.clear();
        await pollUntil(() => d.client.state === "online", 15_000);
        for (const id of reopen) {
          try {
            await d.client.openChat({ chatId: id });
            d.open.add(id);
          } catch {}
        }
        return;
      }
      count(operations, d.networkUp ? "network off" : "network on");
      d.history.push(`@${Date.now()} network ${d.networkUp ? "off" : "on"}`);
      d.networkUp = !d.networkUp;
      d.client.setNetworkAvailable(d.networkUp);
    };

    // --- Operations and faults, both seeded (two streams of the same PRNG seed) -------------
    const opRng = prng(options.seed ^ 0x9e3779b9);
    const faultRng = prng(options.seed ^ 0x85ebca6b);
    chaosStart = Date.now();
    const chaosUntil = chaosStart + options.durationMs;
    const MAX_OPS = Math.max(50, Math.round(options.durationMs / 20));

    /** Set from the last fault on: no device moves or loses its network any more. */
    let tail = false;
    /** Set once the last fault is over and the operations ran on for a while after it. */
    let faultsDone = false;
    const opsLoop = async () => {
      // Until the duration has passed and the faults are over (the guaranteed faults may take
      // longer than a short duration on a loaded machine), bounded in count and time.
      const hardStop = chaosUntil + 60_000;
      for (let i = 0; i < MAX_OPS && !(faultsDone && Date.now() >= chaosUntil); i++) {
        if (Date.now() > hardStop) break;
        const idle = devices.filter((d) => !d.busy);
        if (idle.length) {
          const d = opRng.pick(idle);
          d.busy = true;
          // Each operation draws from its own PRNG, seeded in issue order, so that operations
          // finishing in another order (load) do not change what later ones choose.
          track(
            runOp(d, prng(Math.floor(opRng.next() * 2 ** 32)))
              .catch(() => count(operations, "refused or failed"))
              .finally(() => {
                d.busy = false;
              }),
          );
        }
        await sleep(opRng.int(10, 80));
      }
    };

    const purgeBurst = async () => {
      count(faults, "purge burst");
      mark("purge burst");
      const purges = faultRng.int(3, 12);
      for (let i = 0; i < purges; i++) {
        await admin`select pg_terminate_backend(pid) from pg_stat_activity
                     where application_name = ${APPLICATION_NAME} and datname = ${databaseName}`;
        count(faults, "purge");
        await sleep(faultRng.int(5, 65));
      }
    };
    const nodeKill = async () => {
      const node = faultRng.pick(nodes);
      count(faults, "node SIGKILL");
      mark(`SIGKILL node ${node.index}`);
      await node.kill();
      await sleep(faultRng.int(200, 2000));
      await node.start();
      mark(`node ${node.index} back`);
    };
    /** SIGKILL Redis, down for 0.2–2.5 s. */
    /** While Redis is down, each user's changes that devices on other nodes can only miss. */
    const changesWhileDown = async () => {
      await Promise.all(
        users.map(async (userId) => {
          const mine = devices.filter((x) => x.userId === userId);
          const d = faultRng.pick(mine);
          const chats = chatsOf(d);
          const n = opNo++;
          count(operations, "changes while Redis is down");
          try {
            if (chats.length) {
              void d.client.sendMessage({ chatId: faultRng.pick(chats), content: `m${n} down` });
              await d.client.renameChat({ chatId: faultRng.pick(chats), title: `down ${n}` });
            }
            await d.client.createChat({ title: `created while down ${n}` });
          } catch {
            count(operations, "refused or failed");
          }
        }),
      );
    };
    /** SIGKILL Redis, down for 0.2–2.5 s (with `changes`, at least as long as they take). */
    const redisKill = async (changes = false) => {
      count(faults, "Redis SIGKILL");
      mark("SIGKILL redis");
      await redis.kill();
      await Promise.all([sleep(faultRng.int(200, 2500)), changes ? changesWhileDown() : null]);
      await redis.start();
      mark("redis back");
    };
    const faultsLoop = async () => {
      // Every kind at least once, in a seeded order; then more at random while time is left;
      // then, always, a last Redis outage followed by 4 s of operations: the original run's
      // worst case, events dropped across nodes with nothing much later to heal them.
      const kinds = [nodeKill, redisKill, purgeBurst, purgeBurst];
      for (let i = kinds.length - 1; i > 0; i--) {
        const j = faultRng.int(0, i);
        [kinds[i], kinds[j]] = [kinds[j] as typeof nodeKill, kinds[i] as typeof nodeKill];
      }
      await sleep(faultRng.int(300, 1500));
      for (const fault of kinds) {
        await fault();
        await sleep(faultRng.int(500, 2500));
      }
      for (let i = 0; i < 200 && Date.now() < chaosUntil - 6000; i++) {
        await faultRng.pick([nodeKill, redisKill, purgeBurst, purgeBurst, purgeBurst])();
        await sleep(faultRng.int(500, 2500));
      }
      // From here on, devices neither move nor lose their network (the tail).
      tail = true;
      await redisKill(true);
      // Long enough for the nodes to be back on Redis and for races after that to happen.
      await sleep(4000);
      faultsDone = true;
    };
    await Promise.all([opsLoop(), faultsLoop()]);
    mark(`faults stopped: ${JSON.stringify(operations)} ${JSON.stringify(faults)}`);

    // --- Settle: everything back, every device online, nothing in flight --------------------
    await Promise.all(nodes.filter((n) => !n.up).map((n) => n.start()));
    for (const d of devices) {
      if (!d.networkUp) {
        d.history.push(`@${Date.now()} network on (settling)`);
        d.networkUp = true;
        d.client.setNetworkAvailable(true);
      }
    }
    const settleRng = prng(options.seed);
    for (const [streamId, s] of unfinished) {
      try {
        const fin = await serviceRetry(settleRng, `/streams/${streamId}/finish`, {
          content: s.text || "-",
        });
        if (fin.status === 200 || fin.status === 201) ack(s.chatId, streamId, s.text || "-");
        // A Redis restart (no persistence) forgets open streams: nothing to finish, and the
        // devices must not show it streaming (checked below).
        else if (fin.status === 404) count(faults, "stream lost with Redis");
        // A finish claimed by a node that was killed holds its lease (docs/service-api.md):
        // whether it gets stored later or not, the devices must agree with the database.
        else if (fin.status === 409) count(faults, "stream finish held by a killed node");
        else problems.push(`stream ${streamId} could not be finished: ${JSON.stringify(fin)}`);
      } catch (e) {
        problems.push(`stream ${streamId} could not be finished: ${String(e)}`);
      }
    }
    const faultsEnded = Date.now();
    const idle = await pollUntil(
      () =>
        tasks.size === 0 &&
        allOnline() &&
        devices.every((d) =>
          d.client.outbox
            .getSnapshot()
            .every((e) => e.status === "failed" || e.status === "confirmed"),
        ),
      60_000,
    );
    if (!idle) {
      problems.push(
        `not quiet 60 s after the faults: ${tasks.size} operations in flight; ${devices
          .filter((d) => d.client.state !== "online" || d.client.outbox.getSnapshot().length)
          .map(
            (d) =>
              `${d.name}: ${d.client.state}, outbox ${JSON.stringify(d.client.outbox.getSnapshot().map((e) => e.status))}`,
          )
          .join("; ")}`,
      );
    }
    for (const d of devices) {
      for (const e of d.client.outbox.getSnapshot()) {
        if (e.status === "failed") {
          if (e.error?.code !== "NOT_FOUND") {
            problems.push(
              `${d.name}: send ${e.clientId} failed for good: ${JSON.stringify(e.error)}`,
            );
          }
          await d.client.outbox.discard(e.clientId);
        }
      }
    }

    // --- The check: live devices equal the database, with no forced reconnect ---------------
    let db: DatabaseState | undefined;
    let diffs: string[] = [];
    const converged = await pollUntil(
      async () => {
        db = await readDatabase(sql);
        diffs = devices.flatMap((d) =>
          diffDevice(d.name, d.userId, d.client, d.open, db as DatabaseState),
        );
        return diffs.length === 0;
      },
      options.settleTimeoutMs ?? 30_000,
      250,
    );
    const convergedAfterMs = converged ? Date.now() - faultsEnded : null;
    mark(converged ? "devices equal the database" : "devices still differ");
    if (!converged) {
      problems.push(
        `devices still differ from the database ${options.settleTimeoutMs ?? 30_000} ms after settling (no reconnect forced):`,
        ...diffs,
        ...devices
          .filter((d) => diffs.some((x) => x.startsWith(`${d.name} `)))
          .map(
            (d) =>
              `${d.name} connection history (ms since the faults began): ${d.history
                .slice(-30)
                .map((h) => h.replace(/^@(\d+)/, (_, t) => `${Number(t) - chaosStart}`))
                .join(", ")}`,
          ),
      );
    }
    if (!converged) {
      // The control: the same devices after a forced reconnect (a new client on the same node
      // with the same chats open). They should equal the database then; if they do, the diff
      // above is a live-convergence failure, not a harness or data problem.
      for (const d of devices) {
        const reopen = [...d.open];
        await d.client.close();
        d.client = newClient(d.userId, d.node, d.storage);
        d.open.clear();
        await pollUntil(() => d.client.state === "online", 15_000);
        for (const id of reopen) {
          try {
            await d.client.openChat({ chatId: id });
          } catch {}
          d.open.add(id);
        }
      }
      let after: string[] = [];
      await pollUntil(
        async () => {
          const now = await readDatabase(sql);
          after = devices.flatMap((d) => diffDevice(d.name, d.userId, d.client, d.open, now));
          return after.length === 0;
        },
        10_000,
        250,
      );
      problems.push(
        after.length === 0
          ? "control: after a forced reconnect every device equals the database"
          : "control: even after a forced reconnect:",
        ...after,
      );
    }
    db = await readDatabase(sql);
    // Nothing acked lost or doubled; seq gap-free.
    for (const [chatId, sent] of acked) {
      const chat = db.chats.get(chatId);
      if (!chat) continue; // deleted since: its messages went with it
      const byClient = new Map<string, StoredMessage[]>();
      for (const m of chat.messages)
        byClient.set(m.clientId, [...(byClient.get(m.clientId) ?? []), m]);
      for (const [clientId, content] of sent) {
        const rows = byClient.get(clientId) ?? [];
        if (rows.length !== 1)
          problems.push(`acked ${chatId}/${clientId} stored ${rows.length} times`);
        else if (rows[0]?.content !== content) {
          problems.push(
            `acked ${chatId}/${clientId} stored as ${JSON.stringify(rows[0]?.content)}, sent ${JSON.stringify(content)}`,
          );
        }
      }
    }
    for (const chat of db.chats.values()) {
      const seqs = chat.messages.map((m) => m.seq);
      if (seqs.some((s, i) => s !== i + 1))
        problems.push(`chat ${chat.id}: seq not 1..n: ${seqs.join(",")}`);
      if (chat.lastSeq !== seqs.length)
        problems.push(`chat ${chat.id}: last_seq ${chat.lastSeq}, ${seqs.length} messages`);
    }
    for (const node of nodes) {
      const out = node.proc?.output() ?? "";
      if (/unhandled promise rejection|uncaught exception/i.test(out)) {
        problems.push(`node ${node.index} logged an unhandled error`);
      }
    }
    return {
      seed: options.seed,
      ok: problems.length === 0,
      operations,
      faults,
      acked: ackedCount,
      convergedAfterMs,
      problems,
      timeline,
      wallMs: Date.now() - started,
    };
  } finally {
    await Promise.all(devices.map((d) => d.client.close().catch(() => {})));
    await Promise.all(nodes.map((n) => n.stop().catch(() => {})));
    await redis.kill();
    await sql.end({ timeout: 5 });
    await admin.end({ timeout: 5 });
  }
}

/**
 * Postgres failure: the node reaches the real test Postgres through a TCP proxy written here,
 * which can cut the link (drop every connection, refuse new ones), stall it (keep the sockets
 * open but forward nothing) and restore it. While the database is unreachable commands answer
 * promptly with the retryable UNAVAILABLE and /readyz says 503; once it is back the node
 * recovers by itself, and resending the failed sends with the same clientIds stores each once.
 * Assertions on what is stored go straight to Postgres, not through the proxy.
 */
import {
  type AddressInfo,
  createConnection,
  createServer,
  type Server,
  type Socket,
} from "node:net";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import type { Ack, CommandResults } from "../../protocol/index.js";
import { adminUrl, createTestDatabase, type TestDatabase } from "../helpers/db.js";
import {
  type ClientSocket,
  startTestServer,
  type TestServer,
  tokenFor,
} from "../helpers/server.js";

/** How fast a command must fail while the database refuses connections. */
const FAIL_FAST_MS = 4000;
/**
 * How long a command may take while the database stalls: the server's command timeout
 * (COMMAND_TIMEOUT_MS, 5 s by default) plus headroom for a busy machine.
 */
const STALL_BOUND_MS = 8000;
const RECOVERY_MS = 20_000;

type Mode = "open" | "cut" | "stall";

interface Link {
  client: Socket;
  upstream: Socket | undefined;
  /** Bytes held back while stalled (or before the upstream connection exists). */
  pendingUp: Buffer[];
  pendingDown: Buffer[];
}

/**
 * A TCP proxy to one target. `cut()` destroys every connection and refuses new ones;
 * `stall()` keeps every socket open (and accepts new ones) but forwards nothing; `restore()`
 * forwards again, held-back bytes first.
 */
class TcpProxy {
  private readonly server: Server;
  private readonly links = new Set<Link>();
  private mode: Mode = "open";
  port = 0;
  /** Connections accepted so far (to see that the node really came through the proxy). */
  accepted = 0;

  constructor(
    private readonly targetHost: string,
    private readonly targetPort: number,
  ) {
    this.server = createServer((client) => this.accept(client));
  }

  listen(): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen(0, "127.0.0.1", () => {
        this.server.off("error", reject);
        this.port = (this.server.address() as AddressInfo).port;
        resolve(this.port);
      });
    });
  }

  /** Drops every connection and stops listening: new connections are refused (ECONNREFUSED). */
  async cut(): Promise<void> {
    this.mode = "cut";
    for (const link of this.links) this.drop(link);
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  stall(): void {
    this.mode = "stall";
  }

  /** Forwards again (listening again on the same port after a cut), held-back bytes first. */
  async restore(): Promise<void> {
    if (!this.server.listening) {
      await new Promise<void>((resolve, reject) => {
        this.server.once("error", reject);
        this.server.listen(this.port, "127.0.0.1", () => {
          this.server.off("error", reject);
          resolve();
        });
      });
    }
    this.mode = "open";
    for (const link of this.links) {
      if (!link.upstream) this.connectUpstream(link);
      this.flush(link);
    }
  }

  async close(): Promise<void> {
    this.mode = "cut";
    for (const link of this.links) this.drop(link);
    if (this.server.listening) {
      await new Promise<void>((resolve) => this.server.close(() => resolve()));
    }
  }

  private accept(client: Socket): void {
    this.accepted++;
    if (this.mode === "cut") {
      client.destroy();
      return;
    }
    const link: Link = { client, upstream: undefined, pendingUp: [], pendingDown: [] };
    this.links.add(link);
    client.on("data", (d: Buffer) => this.forward(link, "up", d));
    client.on("error", () => this.drop(link));
    client.on("close", () => this.drop(link));
    if (this.mode === "open") this.connectUpstream(link);
  }

  private connectUpstream(link: Link): void {
    const upstream = createConnection({ host: this.targetHost, port: this.targetPort });
    link.upstream = upstream;
    upstream.on("data", (d: Buffer) => this.forward(link, "down", d));
    upstream.on("error", () => this.drop(link));
    upstream.on("close", () => this.drop(link));
  }

  private forward(link: Link, direction: "up" | "down", data: Buffer): void {
    const target = direction === "up" ? link.upstream : link.client;
    if (this.mode !== "open" || !target) {
      (direction === "up" ? link.pendingUp : link.pendingDown).push(data);
      return;
    }
    target.write(data);
  }

  private flush(link: Link): void {
    for (const d of link.pendingUp.splice(0)) link.upstream?.write(d);
    for (const d of link.pendingDown.splice(0)) link.client.write(d);
  }

  private drop(link: Link): void {
    if (!this.links.delete(link)) return;
    link.client.destroy();
    link.upstream?.destroy();
  }
}

type SendAck = Ack<CommandResults["message:send"]>;

let tdb: TestDatabase;
let proxy: TcpProxy;
let node: TestServer;
/** Direct to Postgres, bypassing the proxy. */
let direct: postgres.Sql;

beforeAll(async () => {
  tdb = await createTestDatabase();
  const target = new URL(adminUrl);
  proxy = new TcpProxy(target.hostname, Number(target.port || 5432));
  await proxy.listen();
  const proxied = new URL(tdb.url);
  proxied.hostname = "127.0.0.1";
  proxied.port = String(proxy.port);
  node = await startTestServer({ databaseUrl: proxied.toString() });
  direct = postgres(tdb.url, { max: 1, onnotice: () => {}, connect_timeout: 5 });
});

afterAll(async () => {
  await proxy?.restore();
  await node?.close();
  await proxy?.close();
  await direct?.end();
  await tdb?.drop();
});

/** Sends and returns the ack with how long it took; a missing ack fails after `boundMs`. */
async function timedSend(
  s: ClientSocket,
  chatId: string,
  clientId: string,
  boundMs: number,
): Promise<{ ack: SendAck; ms: number }> {
  const started = Date.now();
  try {
    const ack = (await s.timeout(boundMs).emitWithAck("message:send", {
      chatId,
      clientId,
      content: `content of ${clientId}`,
    })) as SendAck;
    return { ack, ms: Date.now() - started };
  } catch (e) {
    throw new Error(`message:send ${clientId} got no ack within ${boundMs} ms: ${e}`);
  }
}

async function readyz(): Promise<{ status: number; body: unknown }> {
  const res = await fetch(`${node.url}/readyz`, { signal: AbortSignal.timeout(STALL_BOUND_MS) });
  return { status: res.status, body: await res.json() };
}

/** Polls /readyz until it says 200 (bounded); returns how many polls it took. */
async function waitReady(): Promise<number> {
  const deadline = Date.now() + RECOVERY_MS;
  for (let polls = 1; ; polls++) {
    const r = await readyz().catch(() => ({ status: 0, body: null }));
    if (r.status === 200) {
      expect(r.body).toMatchObject({ status: "ready", database: "up" });
      return polls;
    }
    if (Date.now() > deadline) throw new Error(`/readyz still ${r.status} after ${RECOVERY_MS} ms`);
    await new Promise((res) => setTimeout(res, 100));
  }
}

async function storedClientIds(chatId: string): Promise<{ seq: number; clientId: string }[]> {
  const rows = await direct<{ seq: string; client_id: string }[]>`
    select seq, client_id from chat_memory where session_id = ${chatId} order by seq`;
  return rows.map((r) => ({ seq: Number(r.seq), clientId: r.client_id }));
}

async function newChat(s: ClientSocket): Promise<string> {
  const created = await s.timeout(STALL_BOUND_MS).emitWithAck("chat:create", {});
  if (!created.ok) throw new Error(created.error.message);
  return created.data.chat.id;
}

describe("Postgres unreachable (connections cut and refused)", () => {
  test("commands fail fast with UNAVAILABLE, /readyz is 503; after restore resends store once", async () => {
    const device = await node.connectAs("user_pg_cut");
    const chatId = await newChat(device);
    const before = await timedSend(device, chatId, "cut-0", STALL_BOUND_MS);
    expect(before.ack.ok).toBe(true);
    expect(proxy.accepted).toBeGreaterThan(0);

    await proxy.cut();
    try {
      for (const clientId of ["cut-1", "cut-2", "cut-3"]) {
        const { ack, ms } = await timedSend(device, chatId, clientId, STALL_BOUND_MS);
        expect(ack, clientId).toMatchObject({ ok: false, error: { code: "UNAVAILABLE" } });
        expect(ms, `${clientId} took ${ms} ms`).toBeLessThan(FAIL_FAST_MS);
      }
      // Reads fail the same way.
      const started = Date.now();
      const list = await device.timeout(STALL_BOUND_MS).emitWithAck("chat:list", {});
      expect(list).toMatchObject({ ok: false, error: { code: "UNAVAILABLE" } });
      expect(Date.now() - started).toBeLessThan(FAIL_FAST_MS);

      // Readiness says so, so that a load balancer moves away; liveness does not.
      expect(await readyz()).toMatchObject({
        status: 503,
        body: { status: "unavailable", database: "down" },
      });
      expect((await fetch(`${node.url}/healthz`)).status).toBe(200);

      // A first connection needs the users row: a user never seen is refused as UNAVAILABLE.
      const fresh = node.socket({ token: await tokenFor("user_pg_cut_new") });
      const refusal = await new Promise<unknown>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error("no connect_error")), STALL_BOUND_MS);
        fresh.once("connect", () => reject(new Error("connected while the database was down")));
        fresh.once("connect_error", (err) => {
          clearTimeout(timer);
          resolve((err as Error & { data?: unknown }).data);
        });
      });
      expect(refusal).toMatchObject({ code: "UNAVAILABLE" });
      fresh.close();

      // A user this node knows reconnects without the database (no provisioning round trip);
      // its commands then fail fast as UNAVAILABLE like every other.
      const again = await node.connectAs("user_pg_cut");
      const askedAt = Date.now();
      const listAgain = await again.timeout(STALL_BOUND_MS).emitWithAck("chat:list", {});
      expect(Date.now() - askedAt).toBeLessThan(FAIL_FAST_MS);
      expect(listAgain).toMatchObject({ ok: false, error: { code: "UNAVAILABLE" } });
      again.close();

      // The existing socket stays connected through the outage.
      expect(device.connected).toBe(true);
      // Nothing that was refused is stored: only the message sent before the cut.
      expect(await storedClientIds(chatId)).toEqual([{ seq: 1, clientId: "cut-0" }]);
    } finally {
      await proxy.restore();
    }

    // The node recovers by itself.
    await waitReady();
    const after = await timedSend(device, chatId, "cut-4", STALL_BOUND_MS);
    expect(after.ack).toMatchObject({ ok: true, data: { duplicate: false, message: { seq: 2 } } });

    // The client resends what was refused, with the same clientIds: each is stored once.
    const resent = [];
    for (const clientId of ["cut-1", "cut-2", "cut-3"]) {
      resent.push((await timedSend(device, chatId, clientId, STALL_BOUND_MS)).ack);
    }
    expect(resent.map((a) => (a.ok ? [a.data.message.seq, a.data.duplicate] : a.error))).toEqual([
      [3, false],
      [4, false],
      [5, false],
    ]);
    // A second resend is recognised as a duplicate and returns the stored row.
    const again = await timedSend(device, chatId, "cut-2", STALL_BOUND_MS);
    expect(again.ack).toMatchObject({ ok: true, data: { duplicate: true, message: { seq: 4 } } });

    expect(await storedClientIds(chatId)).toEqual([
      { seq: 1, clientId: "cut-0" },
      { seq: 2, clientId: "cut-4" },
      { seq: 3, clientId: "cut-1" },
      { seq: 4, clientId: "cut-2" },
      { seq: 5, clientId: "cut-3" },
    ]);
  });
});

describe("Postgres stalled (sockets open, nothing forwarded)", () => {
  test("commands still answer within a bound; after restore resends store once", async () => {
    const device = await node.connectAs("user_pg_stall");
    const chatId = await newChat(device);
    expect((await timedSend(device, chatId, "stall-0", STALL_BOUND_MS)).ack.ok).toBe(true);

    proxy.stall();
    let sendAck: SendAck;
    try {
      // A write and a read at once, plus readiness: each must answer within the bound.
      const started = Date.now();
      const [send, list, ready] = await Promise.all([
        timedSend(device, chatId, "stall-1", STALL_BOUND_MS),
        device
          .timeout(STALL_BOUND_MS)
          .emitWithAck("chat:list", {})
          .catch((e: unknown) => {
            throw new Error(`chat:list got no ack within ${STALL_BOUND_MS} ms: ${e}`);
          }),
        readyz(),
      ]);
      sendAck = send.ack;
      expect(send.ack, `send answered after ${send.ms} ms`).toMatchObject({
        ok: false,
        error: { code: "UNAVAILABLE" },
      });
      expect(list).toMatchObject({ ok: false, error: { code: "UNAVAILABLE" } });
      expect(ready).toMatchObject({
        status: 503,
        body: { status: "unavailable", database: "down" },
      });
      expect(Date.now() - started).toBeLessThan(STALL_BOUND_MS);
      expect(device.connected).toBe(true);
    } finally {
      await proxy.restore();
    }
    expect(sendAck.ok).toBe(false);

    await waitReady();
    // The stalled insert may still have committed once its bytes got through: an UNAVAILABLE
    // after a timeout means "unknown", which is exactly what the clientId resend is for.
    const resend = await timedSend(device, chatId, "stall-1", STALL_BOUND_MS);
    expect(resend.ack).toMatchObject({ ok: true, data: { message: { seq: 2 } } });
    const next = await timedSend(device, chatId, "stall-2", STALL_BOUND_MS);
    expect(next.ack).toMatchObject({ ok: true, data: { duplicate: false, message: { seq: 3 } } });

    expect(await storedClientIds(chatId)).toEqual([
      { seq: 1, clientId: "stall-0" },
      { seq: 2, clientId: "stall-1" },
      { seq: 3, clientId: "stall-2" },
    ]);
  });
});

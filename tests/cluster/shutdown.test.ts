/**
 * Graceful shutdown: commands in flight finish and ack, sockets are told to reconnect, and no
 * acknowledged message is lost. In-process (app.close) and as a real process (SIGTERM).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import postgres from "postgres";
import { io } from "socket.io-client";
import { afterAll, describe, expect, test } from "vitest";
import type { Ack, ConnectionClosing } from "../../protocol/index.js";
import { loadOrCreateDevKeys, mintSessionToken } from "../../server/src/auth/dev-keys.js";
import { createTestDatabase, type TestDatabase } from "../helpers/db.js";
import { type ClientSocket, eventually, startTestServer } from "../helpers/server.js";

const cleanups: (() => Promise<void>)[] = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
});

type SendAck = Ack<{ message: { seq: number; clientId: string } }>;

/** Fires `n` sends without waiting; resolves each with its ack, or null if the socket closed first. */
function fireSends(socket: ClientSocket, chatId: string, n: number): Promise<(SendAck | null)[]> {
  return Promise.all(
    Array.from({ length: n }, (_, i) =>
      socket
        .timeout(10_000)
        .emitWithAck("message:send", { chatId, clientId: `s${i}`, content: `msg ${i}` })
        .then((a) => a as SendAck)
        .catch(() => null),
    ),
  );
}

describe("graceful shutdown", () => {
  test("in-flight sends finish; every acked message is stored; resending the rest stores each once", async () => {
    const node1 = await startTestServer();
    const node2 = await startTestServer({ databaseUrl: node1.databaseUrl });
    cleanups.push(
      () => node1.close(),
      () => node2.close(),
    );
    const sql = postgres(node1.databaseUrl, { max: 1, onnotice: () => {} });
    cleanups.push(() => sql.end());

    const device = await node1.connectAs("user_shutdown");
    const closing: ConnectionClosing[] = [];
    device.on("connection:closing", (e) => closing.push(e));
    const created = await device.emitWithAck("chat:create", {});
    if (!created.ok) throw new Error(created.error.message);
    const chatId = created.data.chat.id;

    const pending = fireSends(device, chatId, 60);
    await eventually(async () => {
      const [r] = await sql<{ n: number }[]>`select count(*)::int as n from chat_memory`;
      expect(r!.n).toBeGreaterThan(0); // some sends are in progress or done
    });
    await node1.app.close({ drainMs: 5000 });
    const acks = await pending;

    expect(closing, JSON.stringify(acks.slice(0, 3))).toEqual([
      expect.objectContaining({ reason: "SERVER_SHUTDOWN", reconnect: true }),
    ]);
    const acked = acks.filter((a): a is Extract<SendAck, { ok: true }> => a?.ok === true);
    expect(acked.length).toBeGreaterThan(0);
    const refused = acks.filter((a) => a && !a.ok);
    for (const r of refused) expect(r && !r.ok && r.error.code).toBe("UNAVAILABLE");

    const stored = await sql<{ client_id: string; seq: string }[]>`
      select client_id, seq from chat_memory where session_id = ${chatId} order by seq`;
    const storedIds = new Set(stored.map((r) => r.client_id));
    for (const a of acked) expect(storedIds.has(a.data.message.clientId)).toBe(true);

    // The client resends everything not acked, with the same ids, to another node.
    const again = await node2.connectAs("user_shutdown");
    const retry = acks
      .map((a, i) => (a?.ok ? null : i))
      .filter((i): i is number => i !== null)
      .map((i) =>
        again.emitWithAck("message:send", { chatId, clientId: `s${i}`, content: `msg ${i}` }),
      );
    expect((await Promise.all(retry)).every((a) => a.ok)).toBe(true);

    const final = await sql<{ client_id: string; seq: string }[]>`
      select client_id, seq from chat_memory where session_id = ${chatId} order by seq`;
    expect(final.map((r) => Number(r.seq))).toEqual(Array.from({ length: 60 }, (_, i) => i + 1));
    expect(new Set(final.map((r) => r.client_id)).size).toBe(60);
  });

  test("SIGTERM: the process drains, tells clients, and exits promptly", async () => {
    const tdb: TestDatabase = await createTestDatabase();
    const dataDir = await mkdtemp(path.join(tmpdir(), "chat-sigterm-"));
    cleanups.push(
      () => tdb.drop(),
      () => rm(dataDir, { recursive: true, force: true }),
    );
    const child: ChildProcess = spawn(process.execPath, ["--import", "tsx", "server/src/main.ts"], {
      env: {
        ...process.env,
        NODE_ENV: "development",
        DATABASE_URL: tdb.url,
        PORT: "0",
        DATA_DIR: dataDir,
        LOG_LEVEL: "info",
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    cleanups.push(async () => {
      if (child.exitCode === null) child.kill("SIGKILL");
    });
    let output = "";
    child.stdout?.on("data", (d) => {
      output += d;
    });
    child.stderr?.on("data", (d) => {
      output += d;
    });
    const port = await eventually(() => {
      const m = /"port":(\d+)/.exec(output);
      if (!m) throw new Error(`server not listening yet:\n${output}`);
      return Number(m[1]);
    }, 30_000);

    const keys = await loadOrCreateDevKeys(dataDir);
    const token = await mintSessionToken(keys.privateKeyPem, "user_sigterm");
    const socket: ClientSocket = io(`http://127.0.0.1:${port}`, {
      auth: { token },
      transports: ["websocket"],
      reconnection: false,
    });
    cleanups.push(async () => {
      socket.close();
    });
    await new Promise<void>((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("connect_error", reject);
    });
    const closing: ConnectionClosing[] = [];
    socket.on("connection:closing", (e) => closing.push(e));
    const created = await socket.emitWithAck("chat:create", {});
    if (!created.ok) throw new Error(created.error.message);

    const pending = fireSends(socket, created.data.chat.id, 20);
    const exited = new Promise<number | null>((resolve) =>
      child.once("exit", (code) => resolve(code)),
    );
    const started = Date.now();
    child.kill("SIGTERM");
    const code = await exited;
    const acks = await pending;

    expect(code, output).toBe(0);
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(closing.map((c) => c.reason)).toEqual(["SERVER_SHUTDOWN"]);
    const sql = postgres(tdb.url, { max: 1, onnotice: () => {} });
    try {
      const rows = await sql<{ client_id: string }[]>`select client_id from chat_memory`;
      const stored = new Set(rows.map((r) => r.client_id));
      for (const a of acks) if (a?.ok) expect(stored.has(a.data.message.clientId)).toBe(true);
    } finally {
      await sql.end();
    }
  });
});

/**
 * A stop while Postgres is unreachable, from outside: a production node process reaches its
 * database only through a TCP proxy that the test cuts. docs/protocol.md: the stop is shown at
 * once, the backend's next call is refused STREAM_STOPPED, and the partial reply "is stored
 * within seconds of the database coming back, and arrives as message:created".
 */
import type postgres from "postgres";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import type { ChatMessage } from "../../protocol/index.js";
import { createTestDatabase, type TestDatabase } from "../helpers/db.js";
import { type ClientSocket, eventually } from "../helpers/server.js";
import { newSecret, PgProxy, type Receiver, startReceiver } from "../outbox/support.js";
import { command, ok, openSql, userId } from "../realtime/support.js";
import { errorOf, newServiceKey, serviceClient } from "../service/support.js";
import { device, type NodeProcess, record, startNode } from "./nodes.js";

const KEY = newServiceKey();
let tdb: TestDatabase;
let proxy: PgProxy;
let node: NodeProcess;
let receiver: Receiver;
let sql: postgres.Sql;
const sockets: ClientSocket[] = [];

beforeAll(async () => {
  tdb = await createTestDatabase();
  const target = new URL(tdb.url);
  proxy = new PgProxy(target.hostname, Number(target.port || 5432));
  await proxy.listen();
  const secret = newSecret();
  receiver = await startReceiver(secret);
  node = await startNode(proxy.via(tdb.url), {
    SERVICE_API_KEY: KEY,
    APP_WEBHOOK_URL: receiver.url,
    APP_WEBHOOK_SECRET: secret,
    COMMAND_TIMEOUT_MS: "2000",
  });
  sql = openSql(tdb.url);
}, 120_000);

afterAll(async () => {
  for (const s of sockets) s.disconnect();
  proxy?.restore();
  await node?.stop();
  await sql?.end({ timeout: 5 });
  await receiver?.close();
  await proxy?.close();
  await tdb?.drop();
}, 60_000);

describe("a stop while Postgres is unreachable", () => {
  test("shown stopped at once, the backend refused; the partial reply stored once the database is back", async () => {
    const uid = userId("bbp_stop");
    const d1 = await device(node.url, uid);
    const d2 = await device(node.url, uid);
    sockets.push(d1, d2);
    const r2 = record(d2);
    const { chat } = await ok(d1, "chat:create", { title: "Outage" });
    await ok(d1, "chat:open", { chatId: chat.id });
    await ok(d2, "chat:open", { chatId: chat.id });
    const api = serviceClient(node.url, KEY);
    const started = await api.post<{ stream: { streamId: string } }>(
      `/users/${uid}/chats/${chat.id}/streams`,
      {},
    );
    const streamId = started.body.stream.streamId;
    expect(
      (await api.post(`/streams/${streamId}/chunks`, { index: 0, delta: "So far" })).status,
    ).toBe(200);

    proxy.cut();
    const ack = await command(d1, "message:stop", { chatId: chat.id, streamId });
    // Either answered with the reply not stored yet, or UNAVAILABLE (the command timed out):
    // both are documented; the stop itself has happened.
    if (ack.ok) {
      expect(ack.data).toEqual({ streamId, status: "stopped", message: null });
    } else {
      expect(ack.error.code).toBe("UNAVAILABLE");
    }
    await eventually(() => expect(r2.of("message:stopped", streamId)).not.toHaveLength(0));
    const late = await api.post(`/streams/${streamId}/chunks`, { index: 1, delta: " more" });
    expect(late.status).toBe(409);
    expect(errorOf(late).code).toBe("STREAM_STOPPED");
    const cutAt = Date.now();
    // Down for a while (longer than a stop's lease of twice COMMAND_TIMEOUT_MS).
    await eventually(() => expect(Date.now() - cutAt).toBeGreaterThan(5000), 10_000);
    proxy.restore();
    const backAt = Date.now();
    const stored = await eventually(() => {
      const created = r2
        .of<{ message: ChatMessage }>("message:created")
        .filter((e) => e.message.clientId === streamId);
      expect(created).toHaveLength(1);
      return created[0]?.message;
    }, 30_000);
    console.log("stored", Date.now() - backAt, "ms after the database came back");
    expect(stored).toMatchObject({ content: "So far", stopped: true, role: "assistant" });
    expect(await sql`select 1 from chat_memory where client_id = ${streamId}`).toHaveLength(1);
    // A repeated stop now reports the stored reply.
    const again = await ok(d1, "message:stop", { chatId: chat.id, streamId });
    expect(again).toEqual({ streamId, status: "stopped", message: stored });
    // The backend is told by webhook too, once the database is back.
    await eventually(() => {
      expect(
        receiver.ofType("stream.stop_requested").filter((x) => x.data.streamId === streamId),
      ).toHaveLength(1);
    }, 30_000);
  }, 90_000);
});

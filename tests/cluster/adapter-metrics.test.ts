/**
 * The fan-out's own counters in /metrics (socket/adapter-metrics.ts), which the load test reads
 * for "adapter messages received per broadcast, per node": on two nodes over Redis, a message
 * sent on one node counts its broadcasts there and arrives as adapter messages on the other.
 */
import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, expect, test } from "vitest";
import {
  eventually,
  recordEvents,
  startTestServer,
  type TestServer,
  testRedisUrl,
} from "../helpers/server.js";
import { ok, userId } from "../realtime/support.js";

let a: TestServer;
let b: TestServer;

beforeAll(async () => {
  const redisKeyPrefix = `test-am-${randomBytes(4).toString("hex")}`;
  a = await startTestServer({ redisUrl: testRedisUrl, redisKeyPrefix });
  b = await startTestServer({ redisUrl: testRedisUrl, redisKeyPrefix, databaseUrl: a.databaseUrl });
});
afterAll(async () => {
  await b?.close();
  await a?.close(); // owns the database
});

/** A counter's value from a node's /metrics text. */
async function counter(node: TestServer, name: string): Promise<number> {
  const text = await (await fetch(`${node.url}/metrics`)).text();
  const match = new RegExp(`^${name} ([0-9.e+]+)$`, "m").exec(text);
  if (!match) throw new Error(`${name} is not in /metrics`);
  return Number(match[1]);
}

test("a message's broadcasts are counted where it was sent and received by the other node", async () => {
  const id = userId("fanout");
  const sender = await a.connectAs(id);
  const other = await b.connectAs(id);
  const rec = recordEvents(other);
  const { chat } = await ok(sender, "chat:create", { title: "Counted" });
  await eventually(() => expect(rec.of("chat:created")).toHaveLength(1));
  await ok(other, "chat:open", { chatId: chat.id });

  const sentBefore = await counter(a, "chat_broadcasts_total");
  const receivedBefore = await counter(b, "chat_adapter_messages_received_total");
  await ok(sender, "message:send", { chatId: chat.id, clientId: "c-1", content: "hello" });
  await eventually(() => expect(rec.of("chat:updated")).toHaveLength(1));
  await eventually(() => expect(rec.of("message:created")).toHaveLength(1));
  // message:created to the chat's room and chat:updated to the user's room, at least.
  expect((await counter(a, "chat_broadcasts_total")) - sentBefore).toBeGreaterThanOrEqual(2);
  expect(
    (await counter(b, "chat_adapter_messages_received_total")) - receivedBefore,
  ).toBeGreaterThanOrEqual(2);
});

test("one node without Redis receives no adapter messages, and counts its broadcasts", async () => {
  const single = await startTestServer();
  try {
    const s = await single.connectAs(userId("single"));
    await ok(s, "chat:create", { title: "Alone" });
    expect(await counter(single, "chat_broadcasts_total")).toBeGreaterThanOrEqual(1);
    expect(await counter(single, "chat_adapter_messages_received_total")).toBe(0);
  } finally {
    await single.close();
  }
});

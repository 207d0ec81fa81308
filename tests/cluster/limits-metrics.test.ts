/** Per-user limits (alone and across nodes through Redis) and the Prometheus endpoint. */
import { randomBytes } from "node:crypto";
import { afterAll, describe, expect, test } from "vitest";
import { eventually, startTestServer, type TestServer, testRedisUrl } from "../helpers/server.js";

const servers: TestServer[] = [];
afterAll(async () => {
  for (const s of servers.reverse()) await s.close();
});

async function newChat(server: TestServer, userId: string) {
  const socket = await server.connectAs(userId);
  const created = await socket.emitWithAck("chat:create", {});
  if (!created.ok) throw new Error(created.error.message);
  return { socket, chatId: created.data.chat.id };
}

describe("per-user limits", () => {
  test("the message rate is limited across nodes, with a retry hint, and nothing is stored", async () => {
    const prefix = `rl-${randomBytes(4).toString("hex")}`;
    const limits = { messagesPerWindow: 5, messageWindowSeconds: 60 };
    const a = await startTestServer({
      redisUrl: testRedisUrl,
      redisKeyPrefix: prefix,
      rateLimits: limits,
    });
    const b = await startTestServer({
      redisUrl: testRedisUrl,
      redisKeyPrefix: prefix,
      rateLimits: limits,
      databaseUrl: a.databaseUrl,
    });
    servers.push(a, b);
    const { socket: onA, chatId } = await newChat(a, "user_rate");
    const onB = await b.connectAs("user_rate");
    const results = [];
    for (let i = 0; i < 4; i++) {
      results.push(
        await onA.emitWithAck("message:send", { chatId, clientId: `a${i}`, content: "x" }),
      );
      results.push(
        await onB.emitWithAck("message:send", { chatId, clientId: `b${i}`, content: "x" }),
      );
    }
    expect(results.filter((r) => r.ok)).toHaveLength(5);
    const refused = results.filter((r) => !r.ok);
    expect(refused).toHaveLength(3);
    for (const r of refused) {
      if (r.ok) continue;
      expect(r.error.code).toBe("RATE_LIMITED");
      expect(r.error.retryAfterMs).toBeGreaterThan(0);
    }
    const history = await onA.emitWithAck("message:history", { chatId });
    expect(history.ok && history.data.messages.map((m) => m.seq)).toEqual([1, 2, 3, 4, 5]);
    // Another user is not affected.
    const other = await newChat(a, "user_rate_other");
    const ok = await other.socket.emitWithAck("message:send", {
      chatId: other.chatId,
      clientId: "o1",
      content: "fine",
    });
    expect(ok.ok).toBe(true);
  });

  test("sockets per user are capped across nodes; a freed slot can be used again", async () => {
    const prefix = `cap-${randomBytes(4).toString("hex")}`;
    const limits = { maxSocketsPerUser: 2 };
    const a = await startTestServer({
      redisUrl: testRedisUrl,
      redisKeyPrefix: prefix,
      rateLimits: limits,
    });
    const b = await startTestServer({
      redisUrl: testRedisUrl,
      redisKeyPrefix: prefix,
      rateLimits: limits,
      databaseUrl: a.databaseUrl,
    });
    servers.push(a, b);
    const onA = await a.connectAs("user_cap_cluster");
    await b.connectAs("user_cap_cluster");
    for (const node of [a, b]) {
      const err = await node.connectAs("user_cap_cluster").then(
        () => null,
        (e: { data?: { code?: string } }) => e,
      );
      expect(err?.data?.code).toBe("RATE_LIMITED");
    }
    expect((await b.connectAs("user_cap_other")).connected).toBe(true);
    onA.disconnect();
    await eventually(async () => {
      const again = await b.connectAs("user_cap_cluster");
      expect(again.connected).toBe(true);
    });
  });

  test("without Redis, one node caps its own sockets per user", async () => {
    const server = await startTestServer({ rateLimits: { maxSocketsPerUser: 2 } });
    servers.push(server);
    const first = await server.connectAs("user_cap");
    await server.connectAs("user_cap");
    const err = await server.connectAs("user_cap").then(
      () => null,
      (e: { data?: { code?: string } }) => e,
    );
    expect(err?.data?.code).toBe("RATE_LIMITED");
    first.disconnect();
    await eventually(async () => {
      const again = await server.connectAs("user_cap");
      expect(again.connected).toBe(true);
    });
  });
});

describe("GET /metrics", () => {
  test("reports sockets, commands by outcome, ack latency and database latency", async () => {
    const server = await startTestServer();
    servers.push(server);
    const { socket, chatId } = await newChat(server, "user_metrics");
    await socket.emitWithAck("message:send", { chatId, clientId: "m1", content: "hi" });
    await socket.emitWithAck("message:send", {
      chatId: "not-a-uuid",
      clientId: "m2",
      content: "hi",
    });
    const res = await fetch(`${server.url}/metrics`);
    expect(res.status).toBe(200);
    const text = await res.text();
    expect(text).toMatch(/^chat_sockets_connected 1$/m);
    expect(text).toMatch(/^chat_commands_total\{command="message:send",outcome="ok"\} 1$/m);
    expect(text).toMatch(
      /^chat_commands_total\{command="message:send",outcome="INVALID_PAYLOAD"\} 1$/m,
    );
    expect(text).toMatch(/^chat_command_duration_seconds_count\{command="message:send"\} 2$/m);
    expect(text).toMatch(/^chat_db_query_duration_seconds_count\{operation="message_insert"\} 1$/m);
    expect(text).toMatch(/^chat_handshakes_total\{outcome="ok"\} 1$/m);
    expect(text).toContain("chat_process_cpu_seconds_total");
  });
});

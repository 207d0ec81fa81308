/**
 * The sharded adapter subscribes per room, and `chat:open` waits for the room's subscription
 * before it reads the snapshot. While Redis is down a subscription waits for Redis to come
 * back; `chat:open` must not: it answers within SUBSCRIBE_WAIT_MS, as with the classic adapter.
 */
import { afterAll, beforeAll, expect, test } from "vitest";
import { SUBSCRIBE_WAIT_MS } from "../../server/src/redis/sharded-adapter.js";
import { freePort, RedisProcess } from "../helpers/redis-process.js";
import { startTestServer, type TestServer } from "../helpers/server.js";
import { ok, userId } from "../realtime/support.js";

let redis: RedisProcess;
let node: TestServer;

beforeAll(async () => {
  redis = new RedisProcess(await freePort());
  await redis.start();
  node = await startTestServer({
    redisUrl: redis.url,
    redisAdapter: "sharded",
    commandTimeoutMs: 4000,
  });
});
afterAll(async () => {
  // Back first, as in redis-fault.test.ts: a closing adapter unsubscribes through Redis.
  await redis?.start();
  await node?.close();
  await redis?.kill();
});

test("a chat first opened while Redis is down opens without waiting for Redis", async () => {
  const device = await node.connectAs(userId("sub_down"));
  const { chat } = await ok(device, "chat:create", { title: "During the outage" });
  await redis.kill();
  const started = performance.now();
  // The node's first socket in this chat's room: a new channel to subscribe to.
  const opened = await ok(device, "chat:open", { chatId: chat.id });
  expect(opened.chat.id).toBe(chat.id);
  expect(performance.now() - started).toBeLessThan(SUBSCRIBE_WAIT_MS + 2500);
});

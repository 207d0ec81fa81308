/**
 * A streamed reply started on one node and finished on a node that has just started (a
 * deploy, a restart, a scale-out): the finish is that node's first message write. postgres.js
 * used to send a new pool's first `sql.array()` parameter as text before it knew the array
 * types ("malformed array literal", 22P02, porsager/postgres#789), so that finish answered
 * `500 INTERNAL` once. It must be `201`, stored once, like any finish.
 */
import { randomBytes } from "node:crypto";
import { Redis } from "ioredis";
import type postgres from "postgres";
import { afterAll, expect, test } from "vitest";
import type { ChatMessage } from "../../protocol/index.js";
import { startTestServer, type TestServer, testRedisUrl } from "../helpers/server.js";
import { openSql, userId } from "../realtime/support.js";
import { chatOpenOn, newServiceKey, serviceClient } from "./support.js";

const KEY = newServiceKey();
const redisKeyPrefix = `test-fresh-${randomBytes(4).toString("hex")}`;
const nodes: TestServer[] = [];
let sql: postgres.Sql | undefined;

afterAll(async () => {
  await sql?.end({ timeout: 5 });
  // The first node owns (and drops) the database: close it last.
  for (const n of nodes.reverse()) await n.close();
  const redis = new Redis(testRedisUrl, { maxRetriesPerRequest: 1 });
  try {
    const keys = await redis.keys(`${redisKeyPrefix}:*`);
    if (keys.length > 0) await redis.del(...keys);
  } finally {
    redis.disconnect();
  }
});

test("a stream started on node A is finished on a node that just started: 201, stored once", async () => {
  const common = { redisUrl: testRedisUrl, redisKeyPrefix, serviceApiKey: KEY };
  const a = await startTestServer(common);
  nodes.push(a);
  sql = openSql(a.databaseUrl);
  const uid = userId("fresh");
  const device = await a.connectAs(uid);
  const chatId = await chatOpenOn(device, [device]);

  const apiA = serviceClient(a.url, KEY);
  const started = await apiA.post<{ stream: { streamId: string } }>(
    `/users/${uid}/chats/${chatId}/streams`,
    {},
  );
  expect(started.status).toBe(201);
  const { streamId } = started.body.stream;
  expect((await apiA.post(`/streams/${streamId}/chunks`, { index: 0, delta: "Olá" })).status).toBe(
    200,
  );

  // Node B starts now; the finish is the first thing it does.
  const b = await startTestServer({ ...common, databaseUrl: a.databaseUrl });
  nodes.push(b);
  const finished = await serviceClient(b.url, KEY).post<{ message: ChatMessage }>(
    `/streams/${streamId}/finish`,
    {},
  );
  expect(finished.status, JSON.stringify(finished.body)).toBe(201);
  expect(finished.body.message).toMatchObject({ clientId: streamId, content: "Olá", seq: 1 });

  const rows = await sql<{ client_id: string }[]>`
    select client_id from chat_memory where session_id = ${chatId}`;
  expect(rows.map((r) => r.client_id)).toEqual([streamId]);
});

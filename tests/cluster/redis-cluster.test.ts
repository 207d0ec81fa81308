/**
 * Two nodes on a real Redis Cluster (three masters, three replicas, started by the test from
 * the local redis-server) with the sharded adapter: the per-user socket cap counts sockets on
 * both nodes, a deleted user is disconnected everywhere, and a master killed while both nodes
 * take writes fails over to its replica: every acked message is stored once, and both devices
 * converge on the stored chat (live delivery resumes; what the outage dropped, sync returns).
 */
import { randomBytes } from "node:crypto";
import type postgres from "postgres";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import type { ChatMessage } from "../../protocol/index.js";
import { rooms } from "../../server/src/socket/types.js";
import { stopBackends, testCluster } from "../helpers/backends.js";
import type { RedisClusterProcess } from "../helpers/redis-process.js";
import {
  type ClientSocket,
  eventually,
  recordEvents,
  startTestServer,
  type TestServer,
  tokenFor,
} from "../helpers/server.js";
import { disconnected, nextEvent, ok, openSql, userId } from "../realtime/support.js";
import { clerkEvent, deliver, newSigningSecret, signedDelivery } from "../service/support.js";

const SECRET = newSigningSecret();
const MAX_SOCKETS = 3;
const prefix = `test-rc-${randomBytes(4).toString("hex")}`;
let cluster: RedisClusterProcess;
let nodes: [TestServer, TestServer];
let sql: postgres.Sql;

beforeAll(async () => {
  cluster = await testCluster();
  const common = {
    redisCluster: cluster.nodes,
    redisAdapter: "sharded" as const,
    redisKeyPrefix: prefix,
    webhookSigningSecret: SECRET,
    rateLimits: { maxSocketsPerUser: MAX_SOCKETS },
  };
  const first = await startTestServer(common);
  const second = await startTestServer({ ...common, databaseUrl: first.databaseUrl });
  nodes = [first, second];
  sql = openSql(first.databaseUrl);
}, 60_000);

afterAll(async () => {
  await sql?.end({ timeout: 5 });
  await nodes?.[1]?.close();
  await nodes?.[0]?.close();
  await stopBackends();
});

async function clusterSees(room: string, n: number) {
  await eventually(async () => {
    expect(await nodes[0].app.io.in(room).fetchSockets()).toHaveLength(n);
  });
}

describe("on a Redis Cluster", () => {
  test("the per-user socket cap counts the user's sockets on every node", async () => {
    const uid = userId("rc_cap");
    const [n1, n2] = nodes;
    await n1.connectAs(uid);
    await n2.connectAs(uid);
    await n1.connectAs(uid);
    const refused = n2.socket({ token: await tokenFor(uid) });
    const error = await new Promise<Error & { data?: { code?: string } }>((resolve) =>
      refused.once("connect_error", resolve),
    );
    expect(error.data?.code).toBe("RATE_LIMITED");
  });

  test("a deleted user is disconnected on every node", async () => {
    const uid = userId("rc_deleted");
    const [n1, n2] = nodes;
    const devices = [await n1.connectAs(uid), await n2.connectAs(uid)];
    await clusterSees(rooms.user(uid), 2);
    const gone = devices.map((d) => disconnected(d));
    const delivery = signedDelivery(
      SECRET,
      clerkEvent("user.deleted", { id: uid, object: "user", deleted: true }),
    );
    expect((await deliver(n2.url, delivery)).status).toBe(200);
    expect(await Promise.all(gone)).toEqual(["io server disconnect", "io server disconnect"]);
  });

  test("a master killed under load fails over: nothing acked is lost, devices converge", async () => {
    const uid = userId("rc_failover");
    const [n1, n2] = nodes;
    const d1 = await n1.connectAs(uid);
    const d2 = await n2.connectAs(uid);
    const { chat } = await ok(d1, "chat:create", { title: "Failover" });
    for (const d of [d1, d2]) await ok(d, "chat:open", { chatId: chat.id });
    await clusterSees(rooms.chat(chat.id), 2);
    const recs = [d1, d2].map(recordEvents);

    // Sends as the SDK makes them: a refused or unanswered send is retried with the same id.
    const acked = new Map<string, number>();
    const sendUntilAcked = async (d: ClientSocket, clientId: string) => {
      for (let attempt = 0; attempt < 50; attempt++) {
        const ack = await d
          .timeout(5000)
          .emitWithAck("message:send", { chatId: chat.id, clientId, content: clientId })
          .catch(() => undefined);
        if (ack?.ok) {
          acked.set(clientId, ack.data.message.seq);
          return;
        }
        await new Promise((r) => setTimeout(r, 100));
      }
      throw new Error(`${clientId} was never acked`);
    };
    const PER_DEVICE = 60;
    const load = (d: ClientSocket, name: string) =>
      (async () => {
        for (let i = 0; i < PER_DEVICE; i++) await sendUntilAcked(d, `${name}-${i}`);
      })();

    // The master of the chat room's channel: the node that carries this chat's broadcasts.
    const victim = await cluster.masterOf(`${prefix}:socket.io#/#${rooms.chat(chat.id)}#`);
    const writers = [load(d1, "a"), load(d2, "b")];
    await eventually(() => expect(acked.size).toBeGreaterThanOrEqual(20), 20_000);
    const ackedAtKill = acked.size;
    const resyncs = [d1, d2].map((d) => nextEvent(d, "connection:resync", () => true, 30_000));
    await cluster.failOver(victim);
    // The writes were still going when the master died, and its replica is master now.
    expect(ackedAtKill).toBeLessThan(2 * PER_DEVICE);
    const masters = await cluster.masters();
    expect(masters).toHaveLength(3);
    expect(masters).not.toContain(victim);
    await Promise.all(writers);
    expect(acked.size).toBe(2 * PER_DEVICE);
    // Both nodes noticed that events may have been lost and told their devices to resync.
    await Promise.all(resyncs);

    // Every acked send is stored, once, with the seq its ack carried.
    const rows = await sql<{ client_id: string; seq: number }[]>`
      select client_id, seq::int as seq from chat_memory where session_id = ${chat.id}`;
    expect(new Map(rows.map((r) => [r.client_id, r.seq]))).toEqual(acked);

    // Live delivery works again after the failover, on both nodes.
    const after = await ok(d1, "message:send", {
      chatId: chat.id,
      clientId: "after",
      content: "after the failover",
    });
    await eventually(() => {
      for (const r of recs) {
        const seqs = r.of<{ message: ChatMessage }>("message:created").map((e) => e.message.seq);
        expect(seqs).toContain(after.message.seq);
      }
    });
    // Each device converges: what it saw live plus what sync returns is the stored chat.
    for (const [i, d] of [d1, d2].entries()) {
      const live = new Set(
        recs[i]?.of<{ message: ChatMessage }>("message:created").map((e) => e.message.seq),
      );
      let afterSeq = 0;
      for (;;) {
        const page = await ok(d, "message:sync", { chatId: chat.id, afterSeq, limit: 100 });
        for (const m of page.messages) live.add(m.seq);
        if (!page.hasMore) break;
        afterSeq = page.messages.at(-1)?.seq ?? afterSeq;
      }
      expect([...live].sort((x, y) => x - y)).toEqual(
        Array.from({ length: 2 * PER_DEVICE + 1 }, (_, k) => k + 1),
      );
    }
  }, 90_000);
});

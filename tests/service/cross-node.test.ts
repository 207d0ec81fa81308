/**
 * Two nodes behind one Redis (adapter and stream state, unique key prefix) and one database:
 * a revoked Clerk session is disconnected on every node while the user's other sessions stay,
 * and a streamed reply can move between nodes call by call and is still stored once. Run on
 * every Redis backend (tests/helpers/backends.ts): classic and sharded adapter, Redis Cluster.
 */
import { randomBytes } from "node:crypto";
import type postgres from "postgres";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import type {
  ChatMessage,
  MessageDelta,
  MessageStreamFailed,
  MessageStreaming,
} from "../../protocol/index.js";
import { rooms } from "../../server/src/socket/types.js";
import { redisBackends, stopBackends } from "../helpers/backends.js";
import { eventually, recordEvents, startTestServer, type TestServer } from "../helpers/server.js";
import { disconnected, nextEvent, ok, openSql, userId } from "../realtime/support.js";
import {
  chatOpenOn,
  clerkEvent,
  deliver,
  newServiceKey,
  newSigningSecret,
  serviceClient,
  signedDelivery,
  streamedText,
} from "./support.js";

const KEY = newServiceKey();
const SECRET = newSigningSecret();
afterAll(stopBackends);

describe.each(redisBackends)("across two nodes on $name", (backend) => {
  let nodes: [TestServer, TestServer];
  let sql: postgres.Sql;
  const redisKeyPrefix = `test-svc-${randomBytes(4).toString("hex")}`;

  beforeAll(async () => {
    const common = { ...(await backend.options()), redisKeyPrefix, serviceApiKey: KEY };
    const first = await startTestServer({ ...common, webhookSigningSecret: SECRET });
    const second = await startTestServer({
      ...common,
      webhookSigningSecret: SECRET,
      databaseUrl: first.databaseUrl,
    });
    nodes = [first, second];
    sql = openSql(first.databaseUrl);
  });
  afterAll(async () => {
    await sql?.end({ timeout: 5 });
    // The first node owns (and drops) the database: close it last.
    await nodes?.[1]?.close();
    await nodes?.[0]?.close();
    // Stream state and rate-limit counters of this cluster (they would expire on their own).
    await backend.cleanup(redisKeyPrefix);
  });

  /** Waits until node 0 sees `n` sockets in `room` across the cluster (the adapter is subscribed). */
  async function clusterSees(room: string, n: number) {
    await eventually(async () => {
      expect(await nodes[0].app.io.in(room).fetchSockets()).toHaveLength(n);
    });
  }

  test("a revoked session is disconnected on every node; other sessions stay", async () => {
    const uid = userId("x_revoke");
    const [n1, n2] = nodes;
    const revoked = [
      await n1.connectAs(uid, { sessionId: "sess_revoked" }),
      await n2.connectAs(uid, { sessionId: "sess_revoked" }),
    ];
    const kept = [
      await n1.connectAs(uid, { sessionId: "sess_kept" }),
      await n2.connectAs(uid, { sessionId: "sess_kept" }),
    ];
    await clusterSees(rooms.user(uid), 4);
    await clusterSees(rooms.clerkSession("sess_revoked"), 2);
    const closing = revoked.map((s) => nextEvent(s, "connection:closing"));
    const gone = revoked.map((s) => disconnected(s));
    const keptEvents = kept.map(recordEvents);

    // Delivered to node 2 only; node 1's socket must go too.
    const delivery = signedDelivery(
      SECRET,
      clerkEvent("session.revoked", { id: "sess_revoked", object: "session", user_id: uid }),
    );
    expect((await deliver(n2.url, delivery)).status).toBe(200);

    const expected = {
      reason: "SESSION_REVOKED",
      message: "The session was revoked or ended; sign in again",
      reconnect: false,
    };
    expect(await Promise.all(closing)).toEqual([expected, expected]);
    expect(await Promise.all(gone)).toEqual(["io server disconnect", "io server disconnect"]);
    await clusterSees(rooms.user(uid), 2);
    // A duplicate delivery is harmless.
    expect((await deliver(n1.url, delivery)).status).toBe(200);
    for (const s of kept) {
      expect(s.connected).toBe(true);
      expect((await ok(s, "user:stats", {})).stats.totalConversations).toBe(0);
    }
    for (const r of keptEvents) expect(r.of("connection:closing")).toEqual([]);
  });

  test("a stream moves between nodes call by call, is seen on both and stored once", async () => {
    const uid = userId("x_stream");
    const [n1, n2] = nodes;
    const d1 = await n1.connectAs(uid);
    const d2 = await n2.connectAs(uid);
    const chatId = await chatOpenOn(d1, [d1, d2]);
    await clusterSees(rooms.chat(chatId), 2);
    const recs = [d1, d2].map(recordEvents);
    const [api1, api2] = [serviceClient(n1.url, KEY), serviceClient(n2.url, KEY)];

    const started = await api1.post<{ stream: { streamId: string } }>(
      `/users/${uid}/chats/${chatId}/streams`,
      {},
    );
    expect(started.status).toBe(201);
    const s = `/streams/${started.body.stream.streamId}`;
    const streamId = started.body.stream.streamId;
    // The same chunk through both nodes at once: applied once.
    const racing = await Promise.all([
      api2.post<{ applied: number }>(`${s}/chunks`, { index: 0, delta: "Bon" }),
      api1.post<{ applied: number }>(`${s}/chunks`, { index: 0, delta: "Bon" }),
    ]);
    expect(racing.map((r) => r.status)).toEqual([200, 200]);
    expect(racing.map((r) => r.body.applied).sort()).toEqual([0, 1]);
    expect((await api1.post(`${s}/chunks`, { index: 1, delta: "jour" })).status).toBe(200);
    const finished = await api2.post<{ message: ChatMessage }>(`${s}/finish`, {});
    expect(finished.status).toBe(201);
    expect(finished.body.message).toMatchObject({ clientId: streamId, content: "Bonjour" });
    expect((await api1.post(`${s}/finish`, {})).status).toBe(200);

    await eventually(() => {
      for (const r of recs) {
        expect(r.of<MessageStreaming>("message:streaming").map((e) => e.streamId)).toEqual([
          streamId,
        ]);
        // Coalesced per node, placed by offset: the same text whichever node sent what.
        expect(streamedText(r.of<MessageDelta>("message:delta"))).toBe("Bonjour");
        expect(r.of<{ message: ChatMessage }>("message:created")).toEqual([
          { message: finished.body.message },
        ]);
      }
    });
    const rows = await sql<{ n: number }[]>`
      select count(*)::int as n from chat_memory where session_id = ${chatId}`;
    expect(rows[0]?.n).toBe(1);
  });

  test("an abandoned stream is failed by exactly one node, whichever sweeps", async () => {
    const uid = userId("x_abandon");
    const [n1, n2] = nodes;
    const d2 = await n2.connectAs(uid);
    const chatId = await chatOpenOn(d2, [d2]);
    const rec = recordEvents(d2);
    const started = await serviceClient(n1.url, KEY).post<{ stream: { streamId: string } }>(
      `/users/${uid}/chats/${chatId}/streams`,
      {},
    );
    const { streamId } = started.body.stream;

    // Both nodes sweep at once, as if the timeout (60 s) had passed.
    const later = Date.now() + 61_000;
    const swept = await Promise.all([
      n1.app.services.streams.sweep(later),
      n2.app.services.streams.sweep(later),
    ]);
    expect(swept[0] + swept[1]).toBe(1);
    await eventually(() => {
      expect(rec.of<MessageStreamFailed>("message:failed")).toEqual([
        { streamId, chatId, reason: "ABANDONED", message: expect.stringMatching(/abandoned/) },
      ]);
    });
    expect(
      await Promise.all([
        n1.app.services.streams.sweep(later),
        n2.app.services.streams.sweep(later),
      ]),
    ).toEqual([0, 0]);
    const finish = await serviceClient(n2.url, KEY).post(`/streams/${streamId}/finish`, {});
    expect(finish.status).toBe(409);
  });
});

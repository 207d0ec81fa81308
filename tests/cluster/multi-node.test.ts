/**
 * Three server nodes on separate ports sharing one Postgres database and one Redis (through
 * the Redis adapter): a user's devices on different nodes see every change. Run on every Redis
 * backend (tests/helpers/backends.ts): classic and sharded adapter, Redis Cluster.
 */
import { randomBytes } from "node:crypto";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import type { ChatMessage, ChatSummary, UserStats } from "../../protocol/index.js";
import { rooms } from "../../server/src/socket/types.js";
import { redisBackends, stopBackends } from "../helpers/backends.js";
import {
  type ClientSocket,
  eventually,
  recordEvents,
  startTestServer,
  type TestServer,
} from "../helpers/server.js";

afterAll(stopBackends);

describe.each(redisBackends)("on $name", (backend) => {
  let nodes: TestServer[] = [];
  let sql: postgres.Sql;
  const prefix = `test-${randomBytes(4).toString("hex")}`;

  beforeAll(async () => {
    const redis = await backend.options();
    const first = await startTestServer({ ...redis, redisKeyPrefix: prefix });
    const others = await Promise.all(
      [0, 1].map(() =>
        startTestServer({ ...redis, redisKeyPrefix: prefix, databaseUrl: first.databaseUrl }),
      ),
    );
    nodes = [first, ...others];
    sql = postgres(first.databaseUrl, { max: 2, onnotice: () => {} });
  });

  afterAll(async () => {
    await sql?.end();
    // The first node owns (and drops) the database: close it last.
    for (const node of [...nodes].reverse()) await node.close();
    await backend.cleanup(prefix);
  });

  /** One device of `userId` on each node, once the cluster sees all three. */
  async function devicesOnEveryNode(userId: string): Promise<ClientSocket[]> {
    const devices = await Promise.all(nodes.map((n) => n.connectAs(userId)));
    // fetchSockets asks every node through Redis: proves the adapter is subscribed everywhere.
    await eventually(async () => {
      const sockets = await nodes[0]!.app.io.in(rooms.user(userId)).fetchSockets();
      expect(sockets).toHaveLength(3);
    });
    return devices;
  }

  describe("a user with devices on three nodes", () => {
    test("sees chats, messages, sidebar and stats changes on every node", async () => {
      const [a, b, c] = await devicesOnEveryNode("user_multi");
      const rec = [a!, b!, c!].map(recordEvents);

      const created = await a!.emitWithAck("chat:create", { title: "Across nodes" });
      if (!created.ok) throw new Error(created.error.message);
      const chatId = created.data.chat.id;
      await eventually(() => {
        for (const r of rec) {
          expect(r.of<{ chat: ChatSummary }>("chat:created").map((e) => e.chat.id)).toEqual([
            chatId,
          ]);
        }
      });

      for (const d of [a!, b!, c!])
        expect((await d.emitWithAck("chat:open", { chatId })).ok).toBe(true);

      const sends = [b!, c!, a!].map((d, i) =>
        d.emitWithAck("message:send", { chatId, clientId: `m${i}`, content: `hello ${i}` }),
      );
      const acks = await Promise.all(sends);
      expect(acks.every((x) => x.ok)).toBe(true);

      await eventually(() => {
        for (const r of rec) {
          const seqs = r.of<{ message: ChatMessage }>("message:created").map((e) => e.message.seq);
          expect(seqs.sort()).toEqual([1, 2, 3]);
          const last = r.of<{ chat: ChatSummary }>("chat:updated").at(-1)?.chat;
          expect(last).toBeDefined();
          const stats = r.of<{ stats: UserStats }>("stats:updated").at(-1)?.stats;
          expect(stats).toMatchObject({ totalConversations: 1, messageCount: 3 });
        }
      });
      // The sidebar entries every device received converge on the stored row.
      const [row] = await sql<{ last_seq: string; last_message: { content: string } }[]>`
      select last_seq, last_message from chat_sessions where id = ${chatId}`;
      expect(Number(row!.last_seq)).toBe(3);
      for (const r of rec) {
        const bySeq = r
          .of<{ chat: ChatSummary }>("chat:updated")
          .map((e) => e.chat)
          .sort((x, y) => x.lastSeq - y.lastSeq)
          .at(-1);
        expect(bySeq?.lastMessage?.content).toBe(row!.last_message.content);
      }

      expect((await c!.emitWithAck("chat:rename", { chatId, title: "Renamed" })).ok).toBe(true);
      await eventually(() => {
        for (const r of rec) {
          expect(
            r.of<{ chat: ChatSummary }>("chat:updated").some((e) => e.chat.title === "Renamed"),
          ).toBe(true);
        }
      });

      expect((await b!.emitWithAck("chat:delete", { chatId })).ok).toBe(true);
      await eventually(() => {
        for (const r of rec) expect(r.of<{ chatId: string }>("chat:deleted")).toEqual([{ chatId }]);
      });
    });

    test("a user's sockets on every node can be disconnected from one node", async () => {
      const devices = await devicesOnEveryNode("user_kick");
      const bystander = await nodes[1]!.connectAs("user_stays");
      nodes[2]!.app.io.in(rooms.user("user_kick")).disconnectSockets(true);
      await eventually(() => {
        for (const d of devices) expect(d.connected).toBe(false);
      });
      expect(bystander.connected).toBe(true);
    });

    test("writing from three nodes at once into five chats stores every send once, in one order per chat", async () => {
      const devices = await devicesOnEveryNode("user_multi_writer");
      const chats: ChatSummary[] = [];
      for (let c = 0; c < 5; c++) {
        const ack = await devices[0]!.emitWithAck("chat:create", { title: `writer ${c}` });
        if (!ack.ok) throw new Error("chat:create failed");
        chats.push(ack.data.chat);
      }
      // Every node batches this user's sends across chats, and the batches of different nodes
      // lock the same users row and chats: they must queue (or retry a deadlock), never fail.
      const PER_DEVICE_AND_CHAT = 8;
      const sends = devices.flatMap((device, d) =>
        chats.flatMap((chat) =>
          Array.from({ length: PER_DEVICE_AND_CHAT }, (_, k) =>
            device.emitWithAck("message:send", {
              chatId: chat.id,
              clientId: `w-${d}-${chat.id}-${k}`,
              content: `node ${d} #${k}`,
            }),
          ),
        ),
      );
      const acks = await Promise.all(sends);
      for (const ack of acks) {
        if (!ack.ok) throw new Error(`a send failed: ${JSON.stringify(ack.error)}`);
        expect(ack.data.duplicate).toBe(false);
      }
      const expected = devices.length * PER_DEVICE_AND_CHAT;
      for (const chat of chats) {
        const rows = await sql<{ seq: number }[]>`
        select seq::int as seq from chat_memory where session_id = ${chat.id} order by seq`;
        expect(rows.map((r) => r.seq)).toEqual(Array.from({ length: expected }, (_, i) => i + 1));
      }
      const [user] = await sql<{ message_count: number }[]>`
      select message_count from users where clerk_id = 'user_multi_writer'`;
      expect(user?.message_count).toBe(expected * chats.length);
    });
  });
});

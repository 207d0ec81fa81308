/**
 * The SDK (docs/sdk.md) opening a chat while a reply streams fast, against a production node
 * process: the streamed item must show the text so far and keep growing with the deltas, with
 * no hole (a delta that arrives before the chat:open ack must not be dropped).
 */
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { createChatClient } from "../../client-sdk/src/index.js";
import { createTestDatabase, type TestDatabase } from "../helpers/db.js";
import { tokenFor } from "../helpers/server.js";
import { userId } from "../realtime/support.js";
import { untilState } from "../sdk/helpers.js";
import { newServiceKey, serviceClient } from "../service/support.js";
import { type NodeProcess, startNode } from "./nodes.js";

const KEY = newServiceKey();
let tdb: TestDatabase;
let node: NodeProcess;

beforeAll(async () => {
  tdb = await createTestDatabase();
  node = await startNode(tdb.url, { SERVICE_API_KEY: KEY });
}, 120_000);
afterAll(async () => {
  await node?.stop();
  await tdb?.drop();
}, 60_000);

describe("the SDK opening a chat mid-reply", () => {
  test("shows the text so far and then every delta, without a hole", async () => {
    const uid = userId("bbs_open");
    const writer = createChatClient({ url: node.url, getToken: () => tokenFor(uid) });
    await untilState(writer, "online");
    const { chat } = await writer.createChat({ title: "Fast" });
    const api = serviceClient(node.url, KEY);
    const started = await api.post<{ stream: { streamId: string } }>(
      `/users/${uid}/chats/${chat.id}/streams`,
      {},
    );
    const streamId = started.body.stream.streamId;
    const all = Array.from({ length: 600 }, (_, i) => `t${i} `).join("");
    let sent = "";
    let stop = false;
    const feeding = (async () => {
      for (let i = 0; i < 600 && !stop; i++) {
        const delta = `t${i} `;
        const res = await api.post(`/streams/${streamId}/chunks`, { index: i, delta });
        expect(res.status).toBe(200);
        sent += delta;
        await new Promise((r) => setTimeout(r, 5));
      }
    })();
    const holes: number[] = [];
    try {
      for (let round = 0; round < 16; round++) {
        const reader = createChatClient({ url: node.url, getToken: () => tokenFor(uid) });
        await untilState(reader, "online");
        await reader.openChat({ chatId: chat.id });
        const store = reader.chat(chat.id);
        const content = () =>
          store.getSnapshot().streams.find((s) => s.streamId === streamId)?.content ?? "";
        // From the ack on, the item must keep up with what was sent: within 400 ms (a flush is
        // 40 ms) it must hold what had been sent when the ack came.
        const target = sent.length;
        const t0 = Date.now();
        while (content().length < target && Date.now() - t0 < 3000) {
          await new Promise((r) => setTimeout(r, 10));
        }
        holes.push(Date.now() - t0);
        // A prefix of the reply (it may be a chunk ahead of `sent`, updated after each answer).
        expect(all.startsWith(content())).toBe(true);
        await reader.close();
      }
    } finally {
      stop = true;
      await feeding;
      await writer.close();
    }
    console.log("ms until the SDK showed the text sent before its open's ack:", holes);
    expect(Math.max(...holes)).toBeLessThan(400);
  }, 60_000);
});

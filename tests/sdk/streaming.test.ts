/**
 * The SDK's streamed replies against a real server: the chat store holds a reply in progress
 * as an item that grows, shows it stopped when another device stops it, resumes it after a
 * forced reconnect, and replaces it with the stored message under the same key; the sidebar
 * of a device that never opened the chat shows it generating. No socket or protocol code in
 * the "app": only the SDK's stores and methods.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { ChatSnapshot } from "../../client-sdk/src/index.js";
import { eventually, startTestServer, type TestServer } from "../helpers/server.js";
import { newServiceKey, serviceClient } from "../service/support.js";
import { clients, until, untilState } from "./helpers.js";

const KEY = newServiceKey();
let server: TestServer;
const sdk = clients(() => server);

beforeAll(async () => {
  server = await startTestServer({ serviceApiKey: KEY });
});
afterEach(() => sdk.closeAll());
afterAll(() => server?.close());

const streamOf = (s: ChatSnapshot, streamId: string) => s.items.find((i) => i.key === streamId);

async function startReply(uid: string, chatId: string) {
  const api = serviceClient(server.url, KEY);
  const res = await api.post<{ stream: { streamId: string } }>(
    `/users/${uid}/chats/${chatId}/streams`,
    {},
  );
  expect(res.status).toBe(201);
  const streamId = res.body.stream.streamId;
  let index = 0;
  return {
    streamId,
    async chunk(delta: string) {
      return (await api.post(`/streams/${streamId}/chunks`, { index: index++, delta })).status;
    },
    finish: () => api.post(`/streams/${streamId}/finish`, {}),
  };
}

describe("streamed replies in the chat store", () => {
  it("a reply grows as an item, then becomes the stored message under the same key", async () => {
    const uid = "sdk_stream_grow";
    const c = sdk.create(uid);
    await untilState(c, "online");
    const { chat } = await c.createChat({});
    await c.openChat({ chatId: chat.id });
    const reply = await startReply(uid, chat.id);
    const store = c.chat(chat.id);
    await until(store, (s) => streamOf(s, reply.streamId)?.status === "streaming");
    for (const w of ["Pack ", "light ", "layers."]) expect(await reply.chunk(w)).toBe(200);
    const growing = await until(
      store,
      (s) => streamOf(s, reply.streamId)?.content === "Pack light layers.",
    );
    expect(streamOf(growing, reply.streamId)).toMatchObject({
      role: "assistant",
      seq: null,
      status: "streaming",
      stopped: false,
    });
    expect(growing.streams.map((r) => r.streamId)).toEqual([reply.streamId]);

    expect((await reply.finish()).status).toBe(201);
    const stored = await until(store, (s) => s.messages.length === 1);
    expect(stored.streams).toEqual([]);
    expect(stored.items).toEqual([
      expect.objectContaining({
        key: reply.streamId,
        content: "Pack light layers.",
        status: "sent",
        seq: 1,
        stopped: false,
      }),
    ]);
  });

  it("a device that opens the chat mid-reply shows the text so far", async () => {
    const uid = "sdk_stream_late";
    const a = sdk.create(uid);
    await untilState(a, "online");
    const { chat } = await a.createChat({});
    const reply = await startReply(uid, chat.id);
    await reply.chunk("Already ");
    await reply.chunk("here, ");
    const b = sdk.create(uid);
    await untilState(b, "online");
    await b.openChat({ chatId: chat.id });
    expect(streamOf(b.chat(chat.id).getSnapshot(), reply.streamId)?.content).toBe("Already here, ");
    await reply.chunk("and more.");
    await until(
      b.chat(chat.id),
      (s) => streamOf(s, reply.streamId)?.content === "Already here, and more.",
    );
  });

  it("stopped from another device: shown stopped, then the stored partial reply", async () => {
    const uid = "sdk_stream_stop";
    const a = sdk.create(uid);
    const b = sdk.create(uid);
    await Promise.all([untilState(a, "online"), untilState(b, "online")]);
    const { chat } = await a.createChat({});
    await Promise.all([a.openChat({ chatId: chat.id }), b.openChat({ chatId: chat.id })]);
    const reply = await startReply(uid, chat.id);
    await reply.chunk("Half an ");
    await reply.chunk("answer");
    await until(a.chat(chat.id), (s) => streamOf(s, reply.streamId)?.content === "Half an answer");

    const seenStopped = until(a.chat(chat.id), (s) => {
      const item = streamOf(s, reply.streamId);
      return item?.status === "stopped" || (item?.status === "sent" && item.stopped);
    });
    const result = await b.stopReply({ chatId: chat.id, streamId: reply.streamId });
    expect(result).toMatchObject({
      streamId: reply.streamId,
      status: "stopped",
      message: { content: "Half an answer", stopped: true },
    });
    await seenStopped;
    for (const c of [a, b]) {
      const s = await until(c.chat(chat.id), (x) => x.messages.length === 1);
      expect(s.items).toEqual([
        expect.objectContaining({
          key: reply.streamId,
          status: "sent",
          stopped: true,
          content: "Half an answer",
        }),
      ]);
      expect(s.streams).toEqual([]);
    }
    // The backend is refused from now on.
    expect(await reply.chunk("!")).toBe(409);
  });

  it("resumes after a forced reconnect, with the text streamed while offline", async () => {
    const uid = "sdk_stream_reconnect";
    const c = sdk.create(uid);
    await untilState(c, "online");
    const { chat } = await c.createChat({});
    await c.openChat({ chatId: chat.id });
    const reply = await startReply(uid, chat.id);
    await reply.chunk("Before, ");
    await until(c.chat(chat.id), (s) => streamOf(s, reply.streamId)?.content === "Before, ");

    const offline = untilState(c, "offline");
    server.app.io.in(`user:${uid}`).disconnectSockets(true);
    await offline;
    await reply.chunk("while away, ");
    await untilState(c, "online", 10_000);
    await reply.chunk("after.");
    await until(
      c.chat(chat.id),
      (s) => streamOf(s, reply.streamId)?.content === "Before, while away, after.",
      10_000,
    );
    expect((await reply.finish()).status).toBe(201);
    await until(c.chat(chat.id), (s) => s.messages[0]?.content === "Before, while away, after.");
  });

  it("a device that never opened the chat shows it generating in the sidebar", async () => {
    const uid = "sdk_stream_sidebar";
    const a = sdk.create(uid);
    await untilState(a, "online");
    const { chat } = await a.createChat({});
    const side = sdk.create(uid);
    await until(side.sidebar, (s) => s.chats.some((x) => x.id === chat.id));
    expect(side.sidebar.getSnapshot().chats[0]?.generating).toBeNull();

    const reply = await startReply(uid, chat.id);
    const spinning = await until(
      side.sidebar,
      (s) => s.chats[0]?.generating?.streamId === reply.streamId,
    );
    expect(spinning.chats[0]?.generating?.startedAt).toEqual(expect.any(String));
    // A device that connects now gets it from chat:list.
    const late = sdk.create(uid);
    await until(late.sidebar, (s) => s.chats[0]?.generating?.streamId === reply.streamId);

    await reply.chunk("Done.");
    expect((await reply.finish()).status).toBe(201);
    for (const c of [side, late]) {
      await until(c.sidebar, (s) => s.chats[0]?.generating === null && s.chats[0]?.lastSeq === 1);
    }
    await eventually(() => expect(a.sidebar.getSnapshot().chats[0]?.generating).toBeNull());
  });
});

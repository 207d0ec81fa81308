/**
 * Chat ids in any letter case, against a real server: a UUID is the same chat whatever its case
 * (RFC 9562 compares them case-insensitively), so every id is normalised to lower case at the
 * edge (the protocol's schema and the service API's path). Before, an upper-case id became its
 * own room name: a device that opened its chat by it got no `message:created`, and a delete by
 * it left the other devices in the chat's room.
 * Run on the in-memory adapter and on Redis (sharded adapter: a room is then a Redis channel,
 * subscribed when joined and unsubscribed when left).
 */
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { adapterBackends } from "../helpers/backends.js";
import { eventually, startTestServer, type TestServer } from "../helpers/server.js";
import { newServiceKey, serviceClient } from "../service/support.js";
import { nextEvent, ok, userId } from "./support.js";

describe.each(adapterBackends)("on the $name adapter", (adapter) => {
  let server: TestServer;
  const key = newServiceKey();

  beforeAll(async () => {
    server = await startTestServer({ ...adapter.options(), serviceApiKey: key });
  });
  afterAll(async () => {
    await server?.close();
  });

  /** The socket ids in a chat's room on this node. */
  function roomMembers(chatId: string): string[] {
    return [...(server.app.io.of("/").adapter.rooms.get(`session:${chatId}`) ?? [])];
  }

  describe("chat ids are normalised to lower case", () => {
    test("a device that opens its chat by the upper-case id receives message:created", async () => {
      const uid = userId("idcase");
      const sender = await server.connectAs(uid);
      const viewer = await server.connectAs(uid);
      const { chat } = await ok(sender, "chat:create", { title: "case" });
      const upper = chat.id.toUpperCase();
      expect(upper).not.toBe(chat.id);

      const opened = await ok(viewer, "chat:open", { chatId: upper });
      expect(opened.chat.id).toBe(chat.id);
      expect(roomMembers(chat.id)).toEqual([viewer.id]);

      const live = nextEvent(viewer, "message:created");
      const sent = await ok(sender, "message:send", {
        chatId: upper,
        clientId: "c-upper-1",
        content: "hello in upper case",
      });
      expect(sent.message.chatId).toBe(chat.id);
      expect((await live).message.id).toBe(sent.message.id);

      // The service API's path takes the same id in any case and reaches the same room.
      const reply = nextEvent(viewer, "message:created", (e) => e.message.role === "assistant");
      const posted = await serviceClient(server.url, key).post(
        `/users/${uid}/chats/${upper}/messages`,
        { clientId: "a-upper-1", content: "a reply" },
      );
      expect(posted.status).toBe(201);
      expect((await reply).message.chatId).toBe(chat.id);
    });

    test("a create with an upper-case id stores it in lower case; a delete by it empties the room", async () => {
      const uid = userId("idcase_del");
      const a = await server.connectAs(uid);
      const b = await server.connectAs(uid);
      const c = await server.connectAs(uid);
      const id = "0E5F3B1A-7C2D-4E8F-9A6B-1C2D3E4F5A6B";
      const { chat } = await ok(a, "chat:create", { id, title: "upper" });
      expect(chat.id).toBe(id.toLowerCase());
      // A retry of the same create in another case is the same chat, not a conflict.
      expect((await ok(a, "chat:create", { id: id.toLowerCase(), title: "upper" })).chat.id).toBe(
        chat.id,
      );

      await ok(b, "chat:open", { chatId: chat.id });
      await ok(c, "chat:open", { chatId: id });
      expect(roomMembers(chat.id).sort()).toEqual([b.id, c.id].sort());

      const deleted = nextEvent(b, "chat:deleted");
      expect((await ok(a, "chat:delete", { chatId: id })).chatId).toBe(chat.id);
      expect((await deleted).chatId).toBe(chat.id);
      await eventually(() => expect(roomMembers(chat.id)).toEqual([]));
      expect(roomMembers(id)).toEqual([]);
    });
  });
});

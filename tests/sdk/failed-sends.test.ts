/**
 * A send the server refuses for good shows where users look: in the chat's items, marked
 * failed with the reason, next to the stored messages, until it is retried or discarded
 * (also when its clientId is one a stored message already has: CONFLICT).
 */
import { afterAll, afterEach, beforeAll, expect, it } from "vitest";
import { ChatClientError, type ChatSnapshot } from "../../client-sdk/src/index.js";
import { startTestServer, type TestServer } from "../helpers/server.js";
import { clients, until, untilState } from "./helpers.js";

let server: TestServer;
const sdk = clients(() => server);

beforeAll(async () => {
  server = await startTestServer();
});
afterEach(() => sdk.closeAll());
afterAll(() => server?.close());

const itemRows = (s: ChatSnapshot) => s.items.map((i) => [i.content, i.status, i.error?.code]);

it("a CONFLICT shows in the chat's items as failed, with retry and discard", async () => {
  const c = sdk.create("sdk_failed_conflict");
  await untilState(c, "online");
  const { chat } = await c.createChat({ title: "Failures" });
  await c.openChat({ chatId: chat.id });
  await c.sendMessage({ chatId: chat.id, clientId: "dup-1", content: "first" });

  // The same clientId for other content: refused for good.
  const refused = await c
    .sendMessage({ chatId: chat.id, clientId: "dup-1", content: "second" })
    .then(
      () => null,
      (e: unknown) => e,
    );
  expect(refused).toBeInstanceOf(ChatClientError);
  expect((refused as ChatClientError).code).toBe("CONFLICT");

  const store = c.chat(chat.id);
  const shown = await until(store, (s) => s.items.length === 2, 5000, "the failed item");
  expect(itemRows(shown)).toEqual([
    ["first", "sent", undefined],
    ["second", "failed", "CONFLICT"],
  ]);
  // Rows have distinct keys (a list view keys them by `key`).
  expect(new Set(shown.items.map((i) => i.key)).size).toBe(2);
  expect(shown.pending.map((e) => e.status)).toEqual(["failed"]);

  // Retry: sent again with the same clientId, refused again, still shown as failed.
  c.outbox.retry("dup-1");
  expect(c.outbox.getSnapshot()[0]?.status).toBe("pending");
  expect(itemRows(store.getSnapshot())[1]).toEqual(["second", "pending", undefined]);
  const again = await until(
    c.outbox,
    (entries) => entries[0]?.status === "failed" && entries[0].attempts === 1,
    5000,
    "the retried entry failing again",
  );
  expect(again[0]?.error?.code).toBe("CONFLICT");
  expect(itemRows(store.getSnapshot())).toEqual([
    ["first", "sent", undefined],
    ["second", "failed", "CONFLICT"],
  ]);

  // Discard: gone from the chat and the outbox; the stored message stays.
  await c.outbox.discard("dup-1");
  const after = await until(store, (s) => s.items.length === 1, 5000, "the discard");
  expect(itemRows(after)).toEqual([["first", "sent", undefined]]);
  expect(c.outbox.getSnapshot()).toEqual([]);
});

it("a send refused as INVALID_PAYLOAD shows as failed in the chat's items", async () => {
  const c = sdk.create("sdk_failed_invalid");
  await untilState(c, "online");
  const { chat } = await c.createChat({ title: "Invalid" });
  await c.openChat({ chatId: chat.id });
  // A clientId the server's schema refuses (spaces), so the server answers INVALID_PAYLOAD.
  const refused = await c
    .sendMessage({ chatId: chat.id, clientId: "not allowed here", content: "hello" })
    .then(
      () => null,
      (e: unknown) => e,
    );
  expect((refused as ChatClientError).code).toBe("INVALID_PAYLOAD");
  const shown = await until(c.chat(chat.id), (s) => s.items.length === 1, 5000, "the item");
  expect(itemRows(shown)).toEqual([["hello", "failed", "INVALID_PAYLOAD"]]);
});

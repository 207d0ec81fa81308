/**
 * The transactional outbox and its webhooks, end to end on one node: real sockets, real
 * Postgres, a real HTTP receiver that verifies every signature with `standardwebhooks`.
 */
import { randomUUID } from "node:crypto";
import type postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { eventually, startTestServer, type TestServer } from "../helpers/server.js";
import { ok, openSql, userId } from "../realtime/support.js";
import { errorOf, newServiceKey, serviceClient } from "../service/support.js";
import { newSecret, type Receiver, startReceiver } from "./support.js";

describe("webhooks to the app's backend", () => {
  const secret = newSecret();
  const serviceKey = newServiceKey();
  let receiver: Receiver;
  let server: TestServer;
  let sql: postgres.Sql;

  beforeAll(async () => {
    receiver = await startReceiver(secret);
    server = await startTestServer({
      serviceApiKey: serviceKey,
      appWebhooks: { url: receiver.url, secret },
    });
    sql = openSql(server.databaseUrl);
  });
  afterAll(async () => {
    await sql?.end();
    await server?.close();
    await receiver?.close();
  });

  const forChat = (chatId: string) =>
    receiver.delivered.filter((d) => (d.data as { chatId?: string }).chatId === chatId);

  it("delivers one signed message.created per user message, with the protocol's ChatMessage", async () => {
    const clerkId = userId("wh");
    const s = await server.connectAs(clerkId);
    const { chat } = await ok(s, "chat:create", { title: "Trip to Lisbon" });
    const clientId = randomUUID();
    const { message } = await ok(s, "message:send", {
      chatId: chat.id,
      clientId,
      content: "Where should we eat?",
    });
    // A retried send (same clientId) is stored once and makes no second event.
    const again = await ok(s, "message:send", {
      chatId: chat.id,
      clientId,
      content: "Where should we eat?",
    });
    expect(again.duplicate).toBe(true);

    const [d] = await eventually(() => {
      const got = forChat(chat.id);
      expect(got).toHaveLength(1);
      return got;
    }, 10_000);
    expect(d?.type).toBe("message.created");
    expect(d?.id).toMatch(/^evt_[0-9a-f-]{36}$/);
    expect(d?.headers["content-type"]).toBe("application/json");
    expect(Date.parse(d?.timestamp ?? "")).not.toBeNaN();
    expect(d?.data).toEqual({
      userId: clerkId,
      chatId: chat.id,
      chat: { title: "Trip to Lisbon" },
      message,
    });
    expect(receiver.badSignatures).toBe(0);
    // An assistant reply posted through the service API is not an event for the backend.
    const api = serviceClient(server.url, serviceKey);
    const posted = await api.post(`/users/${clerkId}/chats/${chat.id}/messages`, {
      clientId: randomUUID(),
      content: "Try the Time Out Market.",
    });
    expect(posted.status).toBe(201);
    const marker = await ok(s, "message:send", {
      chatId: chat.id,
      clientId: randomUUID(),
      content: "ok",
    });
    await eventually(() => expect(forChat(chat.id)).toHaveLength(2), 10_000);
    expect(forChat(chat.id).map((x) => (x.data.message as { seq: number }).seq)).toEqual([
      message.seq,
      marker.message.seq,
    ]);
  });

  it("a rolled-back insert has no event; a committed one has exactly one", async () => {
    const clerkId = userId("rb");
    const s = await server.connectAs(clerkId);
    const { chat } = await ok(s, "chat:create", { title: "rollback" });
    const rollback = new Error("rollback");
    await expect(
      sql.begin(async (tx) => {
        await tx`insert into chat_memory (session_id, message, client_id)
                 values (${chat.id}, ${tx.json({ role: "user", content: "never" })}, 'rolled-back')`;
        const [row] = await tx<{ n: number }[]>`
          select count(*)::int as n from app_events where chat_id = ${chat.id}`;
        // Enqueued inside the insert's own transaction…
        expect(row?.n).toBe(1);
        throw rollback;
      }),
    ).rejects.toBe(rollback);
    // …and gone with it.
    const [after] = await sql<{ n: number }[]>`
      select count(*)::int as n from app_events where chat_id = ${chat.id}`;
    expect(after?.n).toBe(0);
    const { message } = await ok(s, "message:send", {
      chatId: chat.id,
      clientId: "committed",
      content: "kept",
    });
    await eventually(() => expect(forChat(chat.id)).toHaveLength(1), 10_000);
    expect(forChat(chat.id)[0]?.data.message).toMatchObject({ id: message.id });
    expect(
      receiver.attempts.some(
        (a) => (a.data.message as { clientId?: string })?.clientId === "rolled-back",
      ),
    ).toBe(false);
  });

  it("keeps a chat's order through failures while other chats proceed; backoff within seconds, capped", async () => {
    const clerkId = userId("order");
    const s = await server.connectAs(clerkId);
    const { chat: stuck } = await ok(s, "chat:create", { title: "stuck" });
    const { chat: free } = await ok(s, "chat:create", { title: "free" });
    const FAILURES = 5;
    receiver.answer = (d) =>
      (d.data as { chatId?: string }).chatId === stuck.id &&
      d.attempt <= FAILURES &&
      (d.data.message as { content?: string })?.content === "first"
        ? 503
        : 204;
    try {
      for (const content of ["first", "second", "third"]) {
        await ok(s, "message:send", { chatId: stuck.id, clientId: randomUUID(), content });
      }
      await ok(s, "message:send", {
        chatId: free.id,
        clientId: randomUUID(),
        content: "elsewhere",
      });
      // The other chat is not held up by the failing one.
      await eventually(() => expect(forChat(free.id)).toHaveLength(1), 10_000);
      await eventually(() => expect(forChat(stuck.id)).toHaveLength(3), 20_000);
      const contents = forChat(stuck.id).map(
        (d) => (d.data.message as { content: string }).content,
      );
      expect(contents).toEqual(["first", "second", "third"]);
      // Nothing later in the chat was even attempted before "first" succeeded.
      const firstOk = forChat(stuck.id)[0]?.at ?? 0;
      const early = receiver.attempts.filter(
        (a) =>
          (a.data as { chatId?: string }).chatId === stuck.id &&
          a.at < firstOk &&
          (a.data.message as { content: string }).content !== "first",
      );
      expect(early).toEqual([]);
      // The same webhook-id on every attempt; waits grow from ~100 ms and stay under the cap
      // (1 s in tests; the poll adds up to 100 ms).
      const tries = receiver.attempts.filter(
        (a) =>
          (a.data.message as { content?: string })?.content === "first" &&
          (a.data as { chatId?: string }).chatId === stuck.id,
      );
      expect(tries).toHaveLength(FAILURES + 1);
      expect(new Set(tries.map((t) => t.id)).size).toBe(1);
      const gaps = tries.slice(1).map((t, i) => t.at - (tries[i]?.at ?? 0));
      expect(gaps[0]).toBeLessThan(1000);
      for (const g of gaps) expect(g).toBeLessThan(2500);
      expect(Math.max(...gaps)).toBeGreaterThan(Math.min(...gaps));
    } finally {
      receiver.answer = () => 204;
    }
  });

  it("counts slow (timeout), redirecting, garbage and refusing answers as failures and retries them", async () => {
    const clerkId = userId("bad");
    const s = await server.connectAs(clerkId);
    const { chat } = await ok(s, "chat:create", { title: "bad answers" });
    const plan: ("hang" | "redirect" | "garbage" | "reset" | number)[] = [
      "redirect",
      "garbage",
      404,
      "reset",
      "hang",
    ];
    receiver.answer = (d) =>
      (d.data as { chatId?: string }).chatId === chat.id ? (plan[d.attempt - 1] ?? 200) : 204;
    try {
      await ok(s, "message:send", { chatId: chat.id, clientId: randomUUID(), content: "persist" });
      await eventually(() => expect(forChat(chat.id)).toHaveLength(1), 30_000);
      const tries = receiver.attempts.filter(
        (a) => (a.data as { chatId?: string }).chatId === chat.id,
      );
      expect(tries).toHaveLength(plan.length + 1);
      const failed = await server.app.metrics.registry.getSingleMetricAsString(
        "chat_webhook_failed_attempts_total",
      );
      expect(failed).toMatch(/chat_webhook_failed_attempts_total\{type="message.created"\} \d+/);
    } finally {
      receiver.answer = () => 204;
    }
  });

  it("never slows sends while the receiver hangs", async () => {
    const clerkId = userId("hang");
    const s = await server.connectAs(clerkId);
    const { chat } = await ok(s, "chat:create", { title: "hanging receiver" });
    receiver.answer = () => "hang";
    try {
      const started = Date.now();
      for (let i = 0; i < 20; i++) {
        await ok(s, "message:send", { chatId: chat.id, clientId: `m${i}`, content: `msg ${i}` });
      }
      // Twenty acks while every delivery hangs: as fast as ever (generous bound for CI noise).
      expect(Date.now() - started).toBeLessThan(5000);
    } finally {
      receiver.answer = () => 204;
    }
    await eventually(() => expect(forChat(chat.id)).toHaveLength(20), 30_000);
    expect(forChat(chat.id).map((d) => (d.data.message as { clientId: string }).clientId)).toEqual(
      Array.from({ length: 20 }, (_, i) => `m${i}`),
    );
  });

  it("delivers chat.deleted, and stream.stop_requested in order after the chat's earlier events", async () => {
    const clerkId = userId("del");
    const s = await server.connectAs(clerkId);
    const { chat } = await ok(s, "chat:create", { title: "to delete" });
    await ok(s, "message:send", { chatId: chat.id, clientId: "before", content: "hi" });
    const requestedAt = new Date().toISOString();
    await server.app.services.appEvents.stopRequested({
      userId: clerkId,
      chatId: chat.id,
      streamId: "stream-1",
      requestedAt,
    });
    await ok(s, "chat:delete", { chatId: chat.id });
    await eventually(() => expect(forChat(chat.id)).toHaveLength(3), 10_000);
    const got = forChat(chat.id);
    expect(got.map((d) => d.type)).toEqual([
      "message.created",
      "stream.stop_requested",
      "chat.deleted",
    ]);
    expect(got[1]?.data).toEqual({
      userId: clerkId,
      chatId: chat.id,
      streamId: "stream-1",
      requestedAt,
    });
    expect(got[2]?.data).toEqual({ userId: clerkId, chatId: chat.id });
  });

  it("a deleted user's chats each get one chat.deleted", async () => {
    const clerkId = userId("gone");
    const s = await server.connectAs(clerkId);
    const { chat: a } = await ok(s, "chat:create", { title: "a" });
    const { chat: b } = await ok(s, "chat:create", { title: "b" });
    s.disconnect();
    await sql`delete from users where clerk_id = ${clerkId}`;
    await eventually(() => {
      expect(forChat(a.id).map((d) => d.type)).toEqual(["chat.deleted"]);
      expect(forChat(b.id).map((d) => d.type)).toEqual(["chat.deleted"]);
    }, 10_000);
    expect(forChat(a.id)[0]?.data).toEqual({ userId: clerkId, chatId: a.id });
  });

  it("lists failed deliveries and requeues them; metrics show the outbox", async () => {
    const clerkId = userId("failed");
    const s = await server.connectAs(clerkId);
    const { chat } = await ok(s, "chat:create", { title: "gives up" });
    // Retries run out at once for this chat's events (a window already spent).
    receiver.answer = (d) => ((d.data as { chatId?: string }).chatId === chat.id ? 500 : 204);
    await ok(s, "message:send", { chatId: chat.id, clientId: "lost", content: "x" });
    await sql`update app_events set created_at = now() - interval '2 days' where chat_id = ${chat.id}`;
    const api = serviceClient(server.url, serviceKey);
    type Failed = {
      failed: {
        id: string;
        type: string;
        chatId: string;
        attempts: number;
        lastError: string;
        lastAttemptAt: string;
      }[];
      next: string | null;
    };
    const listed = await eventually(async () => {
      const r = await api.get<Failed>("/webhooks/failed");
      expect(r.status).toBe(200);
      expect(r.body.failed.filter((f) => f.chatId === chat.id)).toHaveLength(1);
      return r.body.failed.find((f) => f.chatId === chat.id);
    }, 10_000);
    expect(listed).toMatchObject({ type: "message.created", chatId: chat.id });
    expect(listed?.attempts).toBeGreaterThanOrEqual(1);
    expect(listed?.lastError).toMatch(/^HTTP 500/);
    expect(Date.parse(listed?.lastAttemptAt ?? "")).not.toBeNaN();
    expect(errorOf(await api.get("/webhooks/failed?limit=0")).code).toBe("INVALID_PAYLOAD");
    expect(errorOf(await api.post("/webhooks/failed/requeue", { ids: ["nope"] })).code).toBe(
      "INVALID_PAYLOAD",
    );
    expect(errorOf(await api.post("/webhooks/failed/requeue", {})).code).toBe("INVALID_PAYLOAD");

    receiver.answer = () => 204;
    const requeued = await api.post<{ requeued: number }>("/webhooks/failed/requeue", {
      ids: [listed?.id],
    });
    expect(requeued.body).toEqual({ requeued: 1 });
    await eventually(() => expect(forChat(chat.id)).toHaveLength(1), 10_000);
    expect(forChat(chat.id)[0]?.id).toBe(listed?.id);
    const after = await api.get<Failed>("/webhooks/failed");
    expect(after.body.failed.filter((f) => f.chatId === chat.id)).toEqual([]);

    const text = await server.app.metrics.registry.metrics();
    expect(text).toMatch(/chat_webhook_delivered_total\{type="message.created"\} [1-9]/);
    expect(text).toMatch(/chat_webhook_gave_up_total\{type="message.created"\} [1-9]/);
    expect(text).toMatch(/chat_webhook_delivery_latency_seconds_count [1-9]/);
    expect(text).toMatch(/chat_webhook_events_pending \d+/);
  });

  it("the outbox tables are closed to the API roles", async () => {
    for (const role of ["authenticated", "service_role"]) {
      for (const table of ["app_event_leases", "app_events", "app_event_settings"]) {
        const [row] = await sql<{ select: boolean; insert: boolean }[]>`
          select has_table_privilege(${role}, ${`public.${table}`}, 'select') as select,
                 has_table_privilege(${role}, ${`public.${table}`}, 'insert') as insert`;
        expect(row).toEqual({ select: false, insert: false });
      }
    }
  });
});

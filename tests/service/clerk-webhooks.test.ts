/**
 * Clerk webhooks against a real server and real Postgres, signed locally with the scheme Clerk
 * (Svix / Standard Webhooks) uses: user sync, user deletion and session end (sockets closed),
 * and refusal of unsigned, badly signed and replayed (stale) deliveries; duplicates are harmless.
 */
import type postgres from "postgres";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import type { ConnectionClosing } from "../../protocol/index.js";
import { recordEvents, startTestServer, type TestServer, tokenFor } from "../helpers/server.js";
import { disconnected, nextEvent, ok, openSql, userId } from "../realtime/support.js";
import {
  clerkEvent,
  clerkUser,
  deliver,
  errorOf,
  http,
  newServiceKey,
  newSigningSecret,
  signedDelivery,
  svixSignature,
} from "./support.js";

const SECRET = newSigningSecret();
let server: TestServer;
let sql: postgres.Sql;

beforeAll(async () => {
  server = await startTestServer({ webhookSigningSecret: SECRET });
  sql = openSql(server.databaseUrl);
});
afterAll(async () => {
  await sql?.end({ timeout: 5 });
  await server?.close();
});

async function userRow(clerkId: string) {
  const [row] = await sql<{ email: string | null; avatar_url: string | null; n: number }[]>`
    select email, avatar_url, (select count(*)::int from users where clerk_id = ${clerkId}) as n
      from users where clerk_id = ${clerkId}`;
  return row;
}

describe("verification", () => {
  test("refuses unsigned, badly signed, forged and replayed deliveries; changes nothing", async () => {
    const uid = userId("wh_verify");
    const event = clerkEvent("user.created", clerkUser(uid, "a@example.com", "https://img/a"));
    const good = signedDelivery(SECRET, event);

    // No svix headers at all, or some of them.
    const unsigned = await deliver(server.url, {
      headers: { "content-type": "application/json" },
      body: good.body,
    });
    expect(unsigned.status).toBe(400);
    expect(errorOf(unsigned).message).toMatch(/svix-id, svix-timestamp, svix-signature/);
    const partial = await deliver(server.url, {
      headers: { ...good.headers, "svix-signature": "" },
      body: good.body,
    });
    expect(partial.status).toBe(400);

    const refused = [
      // Another secret.
      signedDelivery(newSigningSecret(), event),
      // Signature of other content.
      { ...good, body: good.body.replace("a@example.com", "evil@example.com") },
      // Garbage signature.
      { ...good, headers: { ...good.headers, "svix-signature": "v1,AAAA" } },
      // Right MAC under the wrong version.
      {
        ...good,
        headers: {
          ...good.headers,
          "svix-signature": good.headers["svix-signature"]!.replace("v1,", "v2,"),
        },
      },
      // Replayed: correctly signed, but ten minutes old (or from the future).
      signedDelivery(SECRET, event, { timestamp: Math.floor(Date.now() / 1000) - 600 }),
      signedDelivery(SECRET, event, { timestamp: Math.floor(Date.now() / 1000) + 600 }),
      // A service key is not a webhook signature.
      {
        ...good,
        headers: {
          ...good.headers,
          authorization: `Bearer ${newServiceKey()}`,
          "svix-signature": "x",
        },
      },
    ];
    for (const d of refused) {
      const res = await deliver(server.url, d);
      expect(res.status).toBe(401);
      expect(errorOf(res).code).toBe("UNAUTHORIZED");
    }
    expect(await userRow(uid)).toBeUndefined();

    // Several signatures (key rotation): one valid is enough.
    const rotated = {
      ...good,
      headers: {
        ...good.headers,
        "svix-signature": `v1,${Buffer.alloc(32).toString("base64")} ${good.headers["svix-signature"]}`,
      },
    };
    const accepted = await deliver(server.url, rotated);
    expect(accepted.status).toBe(200);
    expect(accepted.body).toEqual({ received: true, handled: true });
    expect(await userRow(uid)).toEqual({
      email: "a@example.com",
      avatar_url: "https://img/a",
      n: 1,
    });

    const wrongMethod = await http(`${server.url}/webhooks/clerk`);
    expect(wrongMethod.status).toBe(404);
    // The service API is not configured on this server.
    const api = await http(`${server.url}/service/v1/users/${uid}/stats`, {
      headers: { authorization: "Bearer x" },
    });
    expect(api.status).toBe(404);
  });

  test("a signed but malformed event is 400, an unknown type is acknowledged and ignored", async () => {
    const malformed = await deliver(
      server.url,
      signedDelivery(SECRET, clerkEvent("user.created", { email_addresses: [] })),
    );
    expect(malformed.status).toBe(400);
    expect(errorOf(malformed).code).toBe("INVALID_PAYLOAD");

    const other = await deliver(
      server.url,
      signedDelivery(SECRET, clerkEvent("organization.created", { id: "org_1" })),
    );
    expect(other.status).toBe(200);
    expect(other.body).toEqual({ received: true, handled: false });

    const id = "msg_manual";
    const ts = Math.floor(Date.now() / 1000);
    const notJson = "this is not json";
    const res = await deliver(server.url, {
      headers: {
        "svix-id": id,
        "svix-timestamp": String(ts),
        "svix-signature": svixSignature(SECRET, id, ts, notJson),
      },
      body: notJson,
    });
    expect(res.status).toBe(400);
    expect(errorOf(res).message).toMatch(/JSON/);
  });
});

describe("users", () => {
  test("user.created and user.updated upsert email and avatar; duplicates are harmless", async () => {
    const uid = userId("wh_user");
    const created = signedDelivery(
      SECRET,
      clerkEvent("user.created", clerkUser(uid, "first@example.com", "https://img/1")),
    );
    expect((await deliver(server.url, created)).status).toBe(200);
    expect(await userRow(uid)).toEqual({
      email: "first@example.com",
      avatar_url: "https://img/1",
      n: 1,
    });

    // The user connects: same row, counters intact.
    const s = await server.connectAs(uid);
    await ok(s, "chat:create", { title: "Kept" });

    const updated = signedDelivery(
      SECRET,
      clerkEvent("user.updated", clerkUser(uid, "second@example.com", "https://img/2")),
    );
    expect((await deliver(server.url, updated)).status).toBe(200);
    // Svix redelivers the very same message (same id, body and signature): still one row.
    expect((await deliver(server.url, updated)).status).toBe(200);
    expect((await deliver(server.url, created)).status).toBe(200);
    expect((await deliver(server.url, updated)).status).toBe(200);
    expect(await userRow(uid)).toEqual({
      email: "second@example.com",
      avatar_url: "https://img/2",
      n: 1,
    });
    const [counters] = await sql<{ total_conversations: number }[]>`
      select total_conversations from users where clerk_id = ${uid}`;
    expect(counters?.total_conversations).toBe(1);

    // No primary email: stored as null.
    const noEmail = { ...clerkUser(uid, "x@example.com", ""), primary_email_address_id: null };
    expect(
      (await deliver(server.url, signedDelivery(SECRET, clerkEvent("user.updated", noEmail))))
        .status,
    ).toBe(200);
    expect(await userRow(uid)).toEqual({ email: null, avatar_url: null, n: 1 });
  });

  test("user.deleted removes the row (cascading) and disconnects every socket of the user", async () => {
    const uid = userId("wh_delete");
    const bystanderId = userId("wh_stays");
    const devices = [await server.connectAs(uid), await server.connectAs(uid)];
    const bystander = await server.connectAs(bystanderId);
    const { chat } = await ok(devices[0]!, "chat:create", { title: "Doomed" });
    await ok(devices[0]!, "message:send", { chatId: chat.id, clientId: "m1", content: "bye" });
    const closing = devices.map((d) => nextEvent(d, "connection:closing"));
    const gone = devices.map((d) => disconnected(d));
    const rec = recordEvents(bystander);

    const delivery = signedDelivery(
      SECRET,
      clerkEvent("user.deleted", { id: uid, object: "user", deleted: true }),
    );
    expect((await deliver(server.url, delivery)).status).toBe(200);

    const expected: ConnectionClosing = {
      reason: "USER_DELETED",
      message: "The user was deleted",
      reconnect: false,
    };
    expect(await Promise.all(closing)).toEqual([expected, expected]);
    expect(await Promise.all(gone)).toEqual(["io server disconnect", "io server disconnect"]);
    expect(await userRow(uid)).toBeUndefined();
    const [left] = await sql<{ chats: number; messages: number }[]>`
      select (select count(*)::int from chat_sessions where id = ${chat.id}) as chats,
             (select count(*)::int from chat_memory where session_id = ${chat.id}) as messages`;
    expect(left).toEqual({ chats: 0, messages: 0 });

    // A redelivery is harmless.
    expect((await deliver(server.url, delivery)).status).toBe(200);
    expect(bystander.connected).toBe(true);
    expect((await ok(bystander, "user:stats", {})).stats.totalConversations).toBe(0);
    expect(rec.of("connection:closing")).toEqual([]);

    // A token the deleted user still holds opens no socket and does not recreate the row.
    const err = await server.connectAs(uid).then(
      () => null,
      (e: { data?: { code?: string } }) => e,
    );
    expect(err?.data?.code).toBe("TOKEN_INVALID");
    expect(await userRow(uid)).toBeUndefined();
  });
});

describe("sessions", () => {
  test("session.ended and session.removed close that session's sockets only", async () => {
    const uid = userId("wh_sess");
    const ended = await server.connectAs(uid, { sessionId: "sess_ended_1" });
    const removed = await server.connectAs(uid, { sessionId: "sess_removed_1" });
    const other = await server.connectAs(uid, { sessionId: "sess_other_1" });
    const closing = [ended, removed].map((d) => nextEvent(d, "connection:closing"));
    const gone = [ended, removed].map((d) => disconnected(d));

    for (const [type, sid] of [
      ["session.ended", "sess_ended_1"],
      ["session.removed", "sess_removed_1"],
    ] as const) {
      const d = signedDelivery(
        SECRET,
        clerkEvent(type, { id: sid, object: "session", user_id: uid, status: "ended" }),
      );
      expect((await deliver(server.url, d)).status).toBe(200);
    }
    for (const e of await Promise.all(closing)) {
      expect(e).toEqual({
        reason: "SESSION_REVOKED",
        message: expect.any(String),
        reconnect: false,
      });
    }
    await Promise.all(gone);
    expect(other.connected).toBe(true);
    expect((await ok(other, "chat:list", {})).chats).toEqual([]);

    // Tokens of the closed sessions can neither reconnect nor refresh; other sessions can.
    const err = await server.connectAs(uid, { sessionId: "sess_ended_1" }).then(
      () => null,
      (e: { data?: { code?: string } }) => e,
    );
    expect(err?.data?.code).toBe("TOKEN_INVALID");
    const refresh = await other.emitWithAck("auth:refresh", {
      token: await tokenFor(uid, { sessionId: "sess_removed_1" }),
    });
    expect(refresh.ok ? "ok" : refresh.error.code).toBe("UNAUTHORIZED");
    expect((await server.connectAs(uid, { sessionId: "sess_new_1" })).connected).toBe(true);
  });
});

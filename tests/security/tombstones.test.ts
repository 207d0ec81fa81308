/**
 * A deleted user stays deleted (issue #11, item 4), against real Postgres, Redis, sockets and
 * Svix-signed webhooks:
 * - handshakes racing a `user.deleted` webhook, on one node and on two nodes over Redis
 *   (deletion handled by one, handshakes on the other): after every round no socket of the
 *   user is connected, none can create a chat, and the users row does not exist;
 * - late and out-of-order `user.updated` / `user.created` deliveries, ordered by Clerk's event
 *   timestamp: a deleted user's row is never recreated, the newest profile wins;
 * - a `user.created` newer than the deletion (Clerk created the user again) lets them back in;
 * - a node that still remembers the user as known does not let them in after the deletion.
 */
import { randomBytes } from "node:crypto";
import { type AddressInfo, createConnection, createServer, type Server } from "node:net";
import { Redis } from "ioredis";
import type postgres from "postgres";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { REVOCATION_TTL_MS } from "../../server/src/services/revocations.js";
import { DEFAULT_KNOWN_TTL_MS } from "../../server/src/services/user.service.js";
import { rooms } from "../../server/src/socket/types.js";
import {
  type ClientSocket,
  eventually,
  startTestServer,
  type TestServer,
  testRedisUrl,
  tokenFor,
} from "../helpers/server.js";
import { command, ok, openSql, userId } from "../realtime/support.js";
import {
  clerkEvent,
  clerkUser,
  deliver,
  newSigningSecret,
  signedDelivery,
} from "../service/support.js";

const SECRET = newSigningSecret();
const redisKeyPrefix = `test-tomb-${randomBytes(4).toString("hex")}`;
/** One node, in-memory adapter and revocations. */
let solo: TestServer;
/** Two nodes behind one Redis and one database. */
let cluster: [TestServer, TestServer];
let sql: postgres.Sql;
let clusterSql: postgres.Sql;

beforeAll(async () => {
  solo = await startTestServer({ webhookSigningSecret: SECRET });
  const common = { redisUrl: testRedisUrl, redisKeyPrefix, webhookSigningSecret: SECRET };
  const a = await startTestServer(common);
  const b = await startTestServer({ ...common, databaseUrl: a.databaseUrl });
  cluster = [a, b];
  sql = openSql(solo.databaseUrl);
  clusterSql = openSql(a.databaseUrl);
});
afterAll(async () => {
  await sql?.end({ timeout: 5 });
  await clusterSql?.end({ timeout: 5 });
  await solo?.close();
  // The first node owns (and drops) the database: close it last.
  await cluster?.[1]?.close();
  await cluster?.[0]?.close();
  const redis = new Redis(testRedisUrl, { maxRetriesPerRequest: 1 });
  try {
    const keys = await redis.keys(`${redisKeyPrefix}:*`);
    if (keys.length > 0) await redis.del(...keys);
  } finally {
    redis.disconnect();
  }
});

/** A Clerk event with an explicit event timestamp (ms), as Clerk stamps every event. */
function eventAt(type: string, data: Record<string, unknown>, timestamp: number) {
  return { ...clerkEvent(type, data), timestamp };
}

function userEvent(type: "user.created" | "user.updated", id: string, email: string, ts: number) {
  return eventAt(type, clerkUser(id, email, `https://img/${email}`), ts);
}

function deletedEvent(id: string, ts: number) {
  return eventAt("user.deleted", { id, object: "user", deleted: true }, ts);
}

/**
 * Delivers `event` signed, as Svix does: a 503 (the database or Redis briefly unavailable on a
 * loaded machine) is retried, at most 5 times; anything but 200 in the end fails the test.
 */
async function send(node: TestServer, event: unknown) {
  for (let attempt = 0; ; attempt++) {
    const res = await deliver(node.url, signedDelivery(SECRET, event));
    if (res.status === 503 && attempt < 5) {
      await new Promise((r) => setTimeout(r, 100 * 2 ** attempt));
      continue;
    }
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    return;
  }
}

async function rowOf(db: postgres.Sql, clerkId: string) {
  const [row] = await db<{ email: string | null; n: number }[]>`
    select email, (select count(*)::int from users where clerk_id = ${clerkId}) as n
      from users where clerk_id = ${clerkId}`;
  return row;
}

/** The outcome of one handshake: the connected socket, or the refusal's `data.code`. */
type Attempt =
  | { socket: ClientSocket; refused?: undefined }
  | { socket?: undefined; refused: string };

function attempt(node: TestServer, token: string): Promise<Attempt> {
  const s = node.socket({ token });
  return new Promise((resolve) => {
    s.once("connect", () => resolve({ socket: s }));
    s.once("connect_error", (e: Error & { data?: { code?: string } }) => {
      s.close();
      resolve({ refused: e.data?.code ?? e.message });
    });
  });
}

/** What a `chat:create` on `s` came to: the error code, "disconnected", or "ok". */
async function tryCreate(s: ClientSocket): Promise<string> {
  if (!s.connected) return "disconnected";
  const gone = new Promise<string>((resolve) =>
    s.once("disconnect", () => resolve("disconnected")),
  );
  const ack = command(s, "chat:create", { title: "after deletion" }).then(
    (a) => (a.ok ? "ok" : a.error.code),
    () => "disconnected",
  );
  return Promise.race([ack, gone]);
}

/**
 * One round: `n` handshakes of a fresh user on `handshakeNode` race a signed `user.deleted`
 * delivered to `deleteNode`, sent while the handshakes are in flight. Even rounds first connect
 * the user once (so the handshake node knows them and skips the database), odd rounds do not.
 */
async function raceRound(
  round: number,
  handshakeNode: TestServer,
  deleteNode: TestServer,
  db: postgres.Sql,
  n = 10,
): Promise<{ connected: number; refused: number }> {
  const uid = userId(`race${round}`);
  const created = Date.now();
  await send(deleteNode, userEvent("user.created", uid, `${uid}@example.com`, created));
  const early = round % 2 === 0 ? await attempt(handshakeNode, await tokenFor(uid)) : undefined;
  if (early) expect(early.refused, "the first connection").toBeUndefined();
  const tokens = await Promise.all(Array.from({ length: n }, () => tokenFor(uid)));

  const pivot = round % n;
  const attempts: Promise<Attempt>[] = [];
  let deletion: Promise<unknown> | undefined;
  for (let i = 0; i < n; i++) {
    attempts.push(attempt(handshakeNode, tokens[i] as string));
    if (i === pivot) deletion = send(deleteNode, deletedEvent(uid, created + 1));
    // Spread the handshakes over a few turns of the event loop, around the deletion.
    await new Promise((r) => setImmediate(r));
  }
  await deletion;
  const outcomes = await Promise.all(attempts);
  const sockets = [early, ...outcomes].flatMap((o) => (o?.socket ? [o.socket] : []));

  // A socket still open now must not be able to act as the user…
  for (const s of sockets) {
    expect(await tryCreate(s), `round ${round}: chat:create on a surviving socket`).not.toBe("ok");
  }
  // …and is closed shortly (the deletion's disconnect, or the check after joining the room).
  await eventually(() => {
    expect(
      sockets.filter((s) => s.connected).length,
      `round ${round}: sockets of the deleted user still connected`,
    ).toBe(0);
  }, 5000);
  expect(await rowOf(db, uid), `round ${round}: the users row`).toBeUndefined();
  // And a token still in hand opens nothing afterwards.
  const after = await attempt(handshakeNode, await tokenFor(uid));
  expect(after.refused, `round ${round}: a handshake after the deletion`).toBe("TOKEN_INVALID");
  expect(await rowOf(db, uid)).toBeUndefined();
  return {
    connected: outcomes.filter((o) => o.socket).length,
    refused: outcomes.filter((o) => o.refused).length,
  };
}

describe("handshakes racing user.deleted", () => {
  test("one node: 20 rounds of 10 handshakes; no socket survives, the row stays deleted", async () => {
    let connected = 0;
    for (let round = 0; round < 20; round++) {
      connected += (await raceRound(round, solo, solo, sql)).connected;
    }
    // The race was real: some handshakes got through before the deletion (and were closed).
    expect(connected).toBeGreaterThan(0);
  }, 120_000);

  test("two nodes over Redis: deletion on node A, handshakes on node B", async () => {
    const [a, b] = cluster;
    let connected = 0;
    for (let round = 0; round < 20; round++) {
      connected += (await raceRound(round, b, a, clusterSql)).connected;
    }
    expect(connected).toBeGreaterThan(0);
  }, 120_000);
});

/**
 * A TCP proxy to the test Redis that holds every chunk for `delayMs` in each direction (order
 * kept): a node behind it has a slow link to Redis. `watch(text)` resolves when a chunk that
 * the node sends contains `text`, just as the proxy passes it on.
 */
async function slowRedisLink(delayMs: number) {
  const target = new URL(testRedisUrl);
  const watchers: { text: string; resolve: () => void }[] = [];
  const server: Server = createServer((client) => {
    const upstream = createConnection(Number(target.port || 6379), target.hostname);
    // When each chunk is due, per direction: a close waits for the last one.
    const last = new Map<object, number>();
    const hold = (chunk: Buffer, to: typeof client, watch: boolean) => {
      const due = Date.now() + delayMs;
      last.set(to, due);
      setTimeout(() => {
        if (watch) {
          const text = chunk.toString("latin1");
          for (const w of watchers.splice(0)) {
            if (text.includes(w.text)) w.resolve();
            else watchers.push(w);
          }
        }
        if (!to.destroyed) to.write(chunk);
      }, due - Date.now());
    };
    client.on("data", (c) => hold(c, upstream, true));
    upstream.on("data", (c) => hold(c, client, false));
    // A side that closes closes the other once what is held for it has been passed on.
    const closeAfter = (to: typeof client) => () =>
      setTimeout(() => to.end(), Math.max(0, (last.get(to) ?? 0) - Date.now()));
    client.on("error", () => upstream.destroy()).on("close", closeAfter(upstream));
    upstream.on("error", () => client.destroy()).on("close", closeAfter(client));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `redis://127.0.0.1:${(server.address() as AddressInfo).port}`,
    watch: (text: string) => new Promise<void>((resolve) => watchers.push({ text, resolve })),
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

describe("a handshake that joins its room after the deletion's disconnect went out", () => {
  test("is closed by the check after the join (node C has a slow link to Redis)", async () => {
    const [a] = cluster;
    const link = await slowRedisLink(150);
    const c = await startTestServer({
      redisUrl: link.url,
      redisKeyPrefix,
      webhookSigningSecret: SECRET,
      databaseUrl: a.databaseUrl,
    });
    try {
      const uid = userId("late_join");
      const t = Date.now();
      await send(a, userEvent("user.created", uid, "late@example.com", t));
      // Node C knows the user: its next handshake asks neither the database nor…
      const first = await c.connectAs(uid);
      // Once node A sees it, node C's link to Redis is up (commands and the adapter).
      await eventually(async () => {
        expect(await a.app.io.in(rooms.user(uid)).fetchSockets()).toHaveLength(1);
      }, 20_000);
      first.disconnect();
      await eventually(async () => {
        expect(await a.app.io.in(rooms.user(uid)).fetchSockets()).toHaveLength(0);
      }, 20_000);
      // …anything but Redis, slowly. As its revocation check leaves node C, node A deletes the
      // user: the check finds nothing, and the disconnect reaches C before the socket joins.
      const token = await tokenFor(uid);
      const checked = link.watch(`revoked:user:${uid}`);
      const handshake = attempt(c, token);
      await checked;
      await send(a, deletedEvent(uid, t + 10));
      const outcome = await handshake;
      if (outcome.socket) {
        const s = outcome.socket;
        expect(await tryCreate(s)).not.toBe("ok");
        await eventually(() => expect(s.connected).toBe(false), 10_000);
      } else {
        expect(outcome.refused).toBe("TOKEN_INVALID");
      }
      expect(await rowOf(clusterSql, uid)).toBeUndefined();
    } finally {
      await c.close();
      await link.close();
    }
  }, 90_000);
});

describe("webhooks ordered by Clerk's event timestamp", () => {
  test("a late user.updated after user.deleted does not recreate the row", async () => {
    const uid = userId("late_update");
    const t = Date.now();
    await send(solo, userEvent("user.created", uid, "first@example.com", t));
    await send(solo, userEvent("user.updated", uid, "second@example.com", t + 10));
    await send(solo, deletedEvent(uid, t + 20));
    expect(await rowOf(sql, uid)).toBeUndefined();

    // An update from before the deletion, delivered (or retried) after it.
    await send(solo, userEvent("user.updated", uid, "late@example.com", t + 15));
    expect(await rowOf(sql, uid)).toBeUndefined();
    // Nor does an update stamped after it, nor a late user.created from before it.
    await send(solo, userEvent("user.updated", uid, "later@example.com", t + 30));
    await send(solo, userEvent("user.created", uid, "first@example.com", t));
    expect(await rowOf(sql, uid)).toBeUndefined();
    // A redelivered or older user.deleted is harmless.
    await send(solo, deletedEvent(uid, t + 20));
    await send(solo, deletedEvent(uid, t + 5));
    expect(await rowOf(sql, uid)).toBeUndefined();
    const refused = await attempt(solo, await tokenFor(uid));
    expect(refused.refused).toBe("TOKEN_INVALID");
    expect(await rowOf(sql, uid)).toBeUndefined();
  });

  test("out-of-order user.updated events keep the newest profile", async () => {
    const uid = userId("order");
    const t = Date.now();
    await send(solo, userEvent("user.created", uid, "v1@example.com", t));
    await send(solo, userEvent("user.updated", uid, "v3@example.com", t + 30));
    await send(solo, userEvent("user.updated", uid, "v2@example.com", t + 20));
    await send(solo, userEvent("user.created", uid, "v1@example.com", t));
    expect((await rowOf(sql, uid))?.email).toBe("v3@example.com");
    // A newer one still applies, and so does the very same event again (a redelivery).
    const v4 = userEvent("user.updated", uid, "v4@example.com", t + 40);
    await send(solo, v4);
    await send(solo, v4);
    expect(await rowOf(sql, uid)).toEqual({ email: "v4@example.com", n: 1 });

    // A handshake does not count as a profile event: a user.created delivered after the
    // user's first connection (Clerk's webhook is late) still sets the email.
    const early = userId("early_socket");
    const s = await solo.connectAs(early);
    await ok(s, "chat:create", { title: "before the webhook" });
    await send(solo, userEvent("user.created", early, "early@example.com", Date.now() - 60_000));
    expect(await rowOf(sql, early)).toEqual({ email: "early@example.com", n: 1 });
    expect(s.connected).toBe(true);
  });
});

describe("Clerk creates the user again", () => {
  async function recreate(
    deleteNode: TestServer,
    createNode: TestServer,
    connectNode: TestServer,
    db: postgres.Sql,
  ) {
    const uid = userId("again");
    const t = Date.now();
    await send(createNode, userEvent("user.created", uid, "old@example.com", t));
    const s = await connectNode.connectAs(uid);
    await ok(s, "chat:create", { title: "old life" });
    await send(deleteNode, deletedEvent(uid, t + 10));
    await eventually(() => expect(s.connected).toBe(false));
    expect((await attempt(connectNode, await tokenFor(uid))).refused).toBe("TOKEN_INVALID");

    await send(createNode, userEvent("user.created", uid, "new@example.com", t + 20));
    expect(await rowOf(db, uid)).toEqual({ email: "new@example.com", n: 1 });
    const back = await attempt(connectNode, await tokenFor(uid));
    expect(back.refused).toBeUndefined();
    const again = back.socket as ClientSocket;
    expect((await ok(again, "chat:list", {})).chats).toEqual([]);
    await ok(again, "chat:create", { title: "new life" });

    // The old deletion, redelivered late, is older than the new user: harmless.
    await send(deleteNode, deletedEvent(uid, t + 10));
    expect(await rowOf(db, uid)).toEqual({ email: "new@example.com", n: 1 });
    expect(again.connected).toBe(true);
    expect((await ok(again, "chat:list", {})).chats).toHaveLength(1);
    // Nor does it leave the user revoked.
    const another = await attempt(connectNode, await tokenFor(uid));
    expect(another.refused).toBeUndefined();
    another.socket?.disconnect();
  }

  test("a user.created newer than the deletion lets the user connect again (one node)", async () => {
    await recreate(solo, solo, solo, sql);
  });

  test("the same across nodes: deleted on A, created again on B, connecting to A and B", async () => {
    const [a, b] = cluster;
    await recreate(a, b, a, clusterSql);
    await recreate(a, b, b, clusterSql);
  });
});

describe("nodes that remember the user as known", () => {
  test("the known-user cache lives shorter than a deleted user's revocation", () => {
    expect(DEFAULT_KNOWN_TTL_MS).toBeLessThan(REVOCATION_TTL_MS);
  });

  test("a node that knows the user lets none of their tokens in after a deletion on another node", async () => {
    const [a, b] = cluster;
    const uid = userId("known");
    const t = Date.now();
    await send(a, userEvent("user.created", uid, "known@example.com", t));
    // Node B provisions the user (and now knows them); the socket then goes away by itself.
    const first = await b.connectAs(uid);
    first.disconnect();
    await eventually(async () => {
      expect(await b.app.io.in(rooms.user(uid)).fetchSockets()).toHaveLength(0);
    });
    await send(a, deletedEvent(uid, t + 10));
    for (let i = 0; i < 5; i++) {
      expect((await attempt(b, await tokenFor(uid))).refused).toBe("TOKEN_INVALID");
    }
    expect(await rowOf(clusterSql, uid)).toBeUndefined();
  });

  test("created again, the user works on a node that still remembers their old row", async () => {
    const [a, b] = cluster;
    const uid = userId("known_again");
    const t = Date.now();
    await send(a, userEvent("user.created", uid, "before@example.com", t));
    const first = await b.connectAs(uid);
    const closed = new Promise((resolve) => first.once("disconnect", resolve));
    // Deleted and created again through node A; node B hears of neither but the disconnect.
    await send(a, deletedEvent(uid, t + 10));
    await closed;
    await send(a, userEvent("user.created", uid, "after@example.com", t + 20));
    const again = await b.connectAs(uid);
    await ok(again, "chat:create", { title: "works" });
    expect((await ok(again, "user:stats", {})).stats.totalConversations).toBe(1);
    expect(await rowOf(clusterSql, uid)).toEqual({ email: "after@example.com", n: 1 });
  });
});

describe("privileges", () => {
  test("no API role (nor PUBLIC) may read or write the tombstones", async () => {
    const rows = await sql<{ role: string; privs: string | null }[]>`
      select r.rolname as role,
             (select string_agg(p, ',') from unnest(array['SELECT','INSERT','UPDATE','DELETE','TRUNCATE','REFERENCES','TRIGGER']) p
               where has_table_privilege(r.oid, 'public.user_tombstones', p)) as privs
        from pg_roles r where r.rolname in ('authenticated', 'service_role', 'anon')`;
    expect(rows.length).toBeGreaterThan(0);
    for (const r of rows) expect(r.privs, r.role).toBeNull();
    const [pub] = await sql<{ acl: string | null }[]>`
      select array_to_string(relacl, ',') as acl from pg_class where oid = 'public.user_tombstones'::regclass`;
    expect(pub?.acl ?? "").not.toMatch(/(^|,)=/);
  });

  test("no API role (nor PUBLIC) may call provision_users", async () => {
    const rows = await sql<{ role: string; can: boolean }[]>`
      select r.rolname as role,
             has_function_privilege(r.oid, 'public.provision_users(text[])', 'EXECUTE') as can
        from pg_roles r where r.rolname in ('authenticated', 'service_role', 'anon')`;
    expect(rows.length).toBeGreaterThan(0);
    for (const r of rows) expect(r.can, r.role).toBe(false);
    const [fn] = await sql<{ acl: string | null }[]>`
      select array_to_string(proacl, ',') as acl from pg_proc
       where oid = 'public.provision_users(text[])'::regprocedure`;
    // Not NULL (the default, which lets PUBLIC execute) and no entry for PUBLIC ("=X/…").
    expect(fn?.acl).not.toBeNull();
    expect(fn?.acl ?? "").not.toMatch(/(^|,)=/);
  });
});

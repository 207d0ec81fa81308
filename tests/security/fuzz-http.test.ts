/**
 * Property-based fuzzing of every HTTP endpoint against a real server: the service API
 * (`/service/v1/…`, with the key, without it and with wrong ones), `POST /webhooks/clerk`
 * (signed, unsigned, badly signed), `/healthz`, `/readyz`, `/metrics`, the development route
 * `POST /dev/token`, Engine.IO's own `/socket.io/` requests, and paths that exist nowhere.
 * Bodies are valid, valid but for one field, or hostile: wrong types, long text, deep nesting,
 * prototype keys, lone surrogates, bytes that are not UTF-8, bodies over the limits.
 *
 * After every run, as in fuzz-socket.test.ts: no 5xx was ever answered and the server still
 * serves; every error had the protocol's shape and nothing internal; the database invariants
 * hold and the counters match what was answered; nothing of the victim (a marker in all their
 * text, their ids) appeared in an answer about another user; the victim's rows are unchanged.
 */
import { randomBytes } from "node:crypto";
import { connect } from "node:net";
import fc from "fast-check";
import { Redis } from "ioredis";
import type postgres from "postgres";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { ErrorCode, Limits } from "../../protocol/index.js";
import { statusOf } from "../../server/src/http/http-json.js";
import {
  type ClientSocket,
  startTestServer,
  type TestServer,
  testRedisUrl,
} from "../helpers/server.js";
import { claimsOf, nextEvent, ok, openSql, userId } from "../realtime/support.js";
import { newServiceKey, newSigningSecret, svixSignature } from "../service/support.js";
import {
  anyValue,
  compact,
  expectDatabaseInvariants,
  expectProtocolError,
  expectPrototypesClean,
  fuzzSettings,
  fuzzTestTimeout,
  hugeText,
  type Model,
  modelPayloads,
  mutate,
  mutation,
  nastyText,
  newMarker,
  outcomes,
  type Pools,
  plainText,
  prototypeBaseline,
  Ref,
  ref,
  resolveRefs,
  runProperty,
  Secrets,
  snapshotUser,
  stringsOf,
  type UserExpectation,
  wrongType,
} from "./fuzz-support.js";

const FILE = "tests/security/fuzz-http.test.ts";
const KEY = newServiceKey();
const SECRET = newSigningSecret();
const OTHER_SECRET = newSigningSecret();
const TTL = { ttlSeconds: 3600 };
/** Bodies above these are refused with 413 (service API, webhooks). */
const SERVICE_MAX_BODY = 1024 * 1024;
const WEBHOOK_MAX_BODY = 256 * 1024;

const marker = newMarker("http");
const secrets = new Secrets(marker);
const attacker = userId("attacker");
const victim = userId("victim");

/**
 * Two nodes on one database and one Redis (adapter, stream state, limits): every request goes
 * to either, so a stream started on one is appended to and finished on the other, and events
 * cross nodes. The attacker's socket is on node 0, the victim's on node 1.
 */
let nodes: [TestServer, TestServer];
let server: TestServer;
let sql: postgres.Sql;
const redisKeyPrefix = `fuzz-http-${randomBytes(4).toString("hex")}`;
let attackerSocket: ClientSocket;
let victimSocket: ClientSocket;
const victimChats: string[] = [];
let received: { socket: string; name: string; payload: unknown }[] = [];
const baseline = prototypeBaseline();

const pools: Record<string, string[]> = {
  attacker: [attacker],
  victim: [victim],
  own: [],
  victimChat: [],
  stream: [],
  ghost: [],
  oddGhost: [],
};
/** Owner (Clerk id) of each stream the service API started. */
const streamOwner = new Map<string, string>();
const expected = new Map<string, UserExpectation>([
  [attacker, { deletedChats: 0, storedMessages: 0, searches: 0, tokenUsage: 0 }],
  [victim, { deletedChats: 0, storedMessages: 0, searches: 0, tokenUsage: 0 }],
]);
const expectation = (who: string) => expected.get(who) as UserExpectation;
/** Answers by family and status, to check that the runs reached every path. */
const tally = new Map<string, number>();

beforeAll(async () => {
  const options = {
    serviceApiKey: KEY,
    webhookSigningSecret: SECRET,
    devTokens: true,
    commandTimeoutMs: 7000,
    redisUrl: testRedisUrl,
    redisKeyPrefix,
  };
  server = await startTestServer(options);
  nodes = [server, await startTestServer({ ...options, databaseUrl: server.databaseUrl })];
  sql = openSql(server.databaseUrl);

  victimSocket = await nodes[1].connectAs(victim, TTL);
  victimSocket.onAny((name: string, payload: unknown) =>
    received.push({ socket: "victim", name, payload }),
  );
  for (let i = 0; i < 3; i++) {
    const { chat } = await ok(victimSocket, "chat:create", { title: `${marker} chat ${i}` });
    victimChats.push(chat.id);
    await ok(victimSocket, "chat:open", { chatId: chat.id });
    const { message } = await ok(victimSocket, "message:send", {
      chatId: chat.id,
      clientId: `victim-${i}`,
      content: `${marker} message ${i}`,
    });
    secrets.add(message.id);
    expectation(victim).storedMessages++;
  }
  const [row] = await sql<{ id: string }[]>`select id from users where clerk_id = ${victim}`;
  secrets.add(victim, ...victimChats, row?.id ?? "");
  pools.victimChat = [...victimChats];

  attackerSocket = await server.connectAs(attacker, TTL);
  attackerSocket.onAny((name: string, payload: unknown) =>
    received.push({ socket: "attacker", name, payload }),
  );
  for (let i = 0; i < 3; i++) {
    const { chat } = await ok(attackerSocket, "chat:create", { title: `own ${i}` });
    pools.own?.push(chat.id);
    await ok(attackerSocket, "chat:open", { chatId: chat.id });
  }
});

afterAll(async () => {
  await sql?.end({ timeout: 5 });
  await nodes?.[1].close();
  await server?.close();
  const redis = new Redis(testRedisUrl, { maxRetriesPerRequest: 1 });
  const keys = await redis.keys(`${redisKeyPrefix}:*`);
  if (keys.length > 0) await redis.del(...keys);
  redis.disconnect();
});

// ---------------------------------------------------------------------------------------------
// Arbitraries: requests

/** How a request authenticates to the service API, and whether the server must accept it. */
interface Auth {
  header: string | undefined;
  accepted: boolean;
}

const authArbitrary: fc.Arbitrary<Auth> = fc.oneof(
  { weight: 12, arbitrary: fc.constant({ header: `Bearer ${KEY}`, accepted: true }) },
  {
    weight: 1,
    arbitrary: fc.constantFrom<Auth>(
      { header: `bearer ${KEY}`, accepted: true },
      { header: `Bearer \t ${KEY}`, accepted: true },
      { header: undefined, accepted: false },
      { header: `Bearer ${newServiceKey()}`, accepted: false },
      { header: `Bearer ${KEY}x`, accepted: false },
      { header: `Bearer ${KEY.slice(0, -1)}`, accepted: false },
      { header: `Bearer ${KEY} ${KEY}`, accepted: false },
      { header: `Basic ${Buffer.from(`x:${KEY}`).toString("base64")}`, accepted: false },
      { header: KEY, accepted: false },
      { header: "Bearer", accepted: false },
      { header: "Bearer ", accepted: false },
      { header: `Bearer ${KEY.toUpperCase()}`, accepted: false },
      { header: `Bearer ${"k".repeat(8000)}`, accepted: false },
    ),
  },
);

/** A path segment that is not a valid id: odd characters, bad percent-encoding, dot segments. */
const badSegment: fc.Arbitrary<string> = fc.oneof(
  fc.constantFrom("%", "%zz", "%E0%A4%A", "%00", "%C0%AF", "..", ".", "%2e%2e", "%2F", "a%20b"),
  nastyText.map((t) => encodeURIComponent(t.isWellFormed() ? t : t.toWellFormed()) || "%"),
  fc.constant("u".repeat(300)),
);

const userSegment = (reads: boolean) =>
  fc.oneof(
    { weight: 8, arbitrary: ref("attacker") },
    { weight: reads ? 2 : 0, arbitrary: ref("victim") },
    { weight: 1, arbitrary: ref("ghost") },
    { weight: 1, arbitrary: fc.stringMatching(/^user_[A-Za-z0-9]{1,12}$/) },
    { weight: 1, arbitrary: badSegment },
  );

const chatSegment = fc.oneof(
  { weight: 6, arbitrary: ref("own") },
  { weight: 3, arbitrary: ref("victimChat") },
  { weight: 1, arbitrary: ref("victimChat", "upper") },
  { weight: 1, arbitrary: fc.uuid() },
  { weight: 1, arbitrary: badSegment },
);

const validClientId = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom("r1", "r2", "same", "victim-0") },
  { weight: 3, arbitrary: fc.stringMatching(/^[A-Za-z0-9._:-]{1,24}$/) },
);

const streamSegment = fc.oneof(
  { weight: 6, arbitrary: ref("stream") },
  { weight: 1, arbitrary: validClientId },
  { weight: 1, arbitrary: badSegment },
);

const validContent = fc.oneof(
  { weight: 6, arbitrary: plainText },
  {
    weight: 2,
    arbitrary: fc.string({ minLength: 1, maxLength: 30, unit: "grapheme" }).map((t) => `f ${t}`),
  },
  { weight: 1, arbitrary: fc.constant("z".repeat(Limits.MAX_MESSAGE_CHARS)) },
);
const textField = fc.oneof(
  { weight: 3, arbitrary: validContent },
  { weight: 2, arbitrary: nastyText },
  { weight: 1, arbitrary: hugeText },
  { weight: 1, arbitrary: fc.constantFrom("", " ", "\u00a0") },
  { weight: 1, arbitrary: wrongType },
);
const role = fc.constantFrom("assistant", "system");
const badRole = fc.oneof(fc.constantFrom("user", "admin", "ASSISTANT", ""), wrongType);
const tokens = fc.oneof(
  { weight: 6, arbitrary: fc.integer({ min: 1, max: 1_000_000 }) },
  { weight: 1, arbitrary: fc.constantFrom(Number.MAX_SAFE_INTEGER, 2 ** 52) },
);
const badTokens = fc.oneof(
  fc.constantFrom(0, -1, 1.5, "5", 1e30, Number.MAX_SAFE_INTEGER + 1, null, true),
  wrongType,
);
const jsonObject = fc.dictionary(fc.string({ maxLength: 8 }), fc.jsonValue({ maxDepth: 2 }), {
  maxKeys: 4,
});
const chunk = fc.record({ index: fc.nat({ max: 6 }), delta: validContent });
const consecutiveChunks = fc
  .tuple(fc.nat({ max: 6 }), fc.array(validContent, { minLength: 1, maxLength: 4 }))
  .map(([first, deltas]) => ({ chunks: deltas.map((delta, i) => ({ index: first + i, delta })) }));

/**
 * A service route: method, path, and its body as valid models (one chosen) and hostile fields.
 * `reads` routes may name the victim (their answers are then the victim's own data).
 */
interface RouteSpec {
  name: string;
  method: "GET" | "POST";
  path: fc.Arbitrary<unknown[]>;
  valid?: Model[];
  hostile?: Model;
  required?: string[];
  query?: fc.Arbitrary<string>;
}

const seqParam = fc.oneof(
  fc.nat({ max: 20 }).map(String),
  fc.constantFrom("-1", "1.5", "abc", "", "99999999999999999", "9007199254740993", "0x10"),
);
const validQuery = fc.oneof(
  fc.record({ limit: fc.integer({ min: 1, max: 200 }).map(String) }, { requiredKeys: [] }),
  fc.record({ before: fc.nat({ max: 20 }).map(String) }),
  fc.record({ after: fc.nat({ max: 20 }).map(String) }),
);
const messagesQuery = fc
  .oneof(
    { weight: 3, arbitrary: validQuery },
    {
      weight: 2,
      arbitrary: fc.record(
        {
          before: seqParam,
          after: seqParam,
          limit: fc.oneof(
            fc.integer({ min: 1, max: 200 }).map(String),
            fc.constantFrom("0", "201", "x"),
          ),
          extra: fc.constantFrom("1", "__proto__"),
        },
        { requiredKeys: [] },
      ),
    },
  )
  .map((q) => new URLSearchParams(Object.entries(q) as [string, string][]).toString());

/** The chat list's query: valid pages, and limits and cursors of every wrong kind. */
const chatsQuery = fc
  .record(
    {
      limit: fc.oneof(
        fc.integer({ min: 1, max: 200 }).map(String),
        fc.constantFrom("0", "201", "-1", "x", "", "1e2"),
      ),
      cursor: fc.oneof(
        fc.string({ maxLength: 40 }),
        fc.string({ maxLength: 40 }).map((t) => Buffer.from(t).toString("base64url")),
        fc.constantFrom("", "x".repeat(201), "MTc2NDY0MDAwMDAwMDAwMDAuYWJj"),
      ),
      extra: fc.constantFrom("1", "__proto__"),
    },
    { requiredKeys: [] },
  )
  .map((q) => new URLSearchParams(Object.entries(q) as [string, string][]).toString());

const routes: RouteSpec[] = [
  {
    name: "post message",
    method: "POST",
    path: fc.tuple(
      fc.constant("users"),
      userSegment(false),
      fc.constant("chats"),
      chatSegment,
      fc.constant("messages"),
    ),
    valid: [{ clientId: validClientId, content: validContent, role }],
    hostile: {
      clientId: fc.oneof(validClientId, nastyText, wrongType),
      content: textField,
      role: badRole,
    },
    required: ["clientId", "content"],
  },
  {
    name: "read messages",
    method: "GET",
    path: fc.tuple(
      fc.constant("users"),
      userSegment(true),
      fc.constant("chats"),
      chatSegment,
      fc.constant("messages"),
    ),
    query: messagesQuery,
  },
  {
    name: "chat list",
    method: "GET",
    path: fc.tuple(fc.constant("users"), userSegment(true), fc.constant("chats")),
    query: chatsQuery,
  },
  {
    name: "stats",
    method: "GET",
    path: fc.tuple(fc.constant("users"), userSegment(true), fc.constant("stats")),
  },
  {
    name: "token usage",
    method: "POST",
    path: fc.tuple(fc.constant("users"), userSegment(false), fc.constant("token-usage")),
    valid: [{ tokens }],
    hostile: { tokens: badTokens },
    required: ["tokens"],
  },
  {
    name: "search",
    method: "POST",
    path: fc.tuple(fc.constant("users"), userSegment(false), fc.constant("searches")),
    valid: [
      {
        filters: jsonObject,
        results: fc.array(fc.jsonValue({ maxDepth: 2 }), { maxLength: 4 }),
        status: fc.constantFrom("completed", "failed"),
      },
      {
        filters: jsonObject,
        results: fc.oneof(fc.constant([]), jsonObject),
        resultsCount: fc.constant(0),
        status: fc.constant("no_results"),
      },
    ],
    hostile: {
      filters: fc.oneof(jsonObject, anyValue),
      results: fc.oneof(jsonObject, anyValue),
      resultsCount: fc.oneof(fc.integer(), fc.constantFrom(-1, 2 ** 31, 1.5)),
      status: fc.oneof(fc.constantFrom("completed", "no_results", "failed", "done"), wrongType),
    },
    required: ["filters", "results", "status"],
  },
  {
    name: "start stream",
    method: "POST",
    path: fc.tuple(
      fc.constant("users"),
      userSegment(false),
      fc.constant("chats"),
      chatSegment,
      fc.constant("streams"),
    ),
    valid: [{ streamId: validClientId, role }],
    hostile: { streamId: fc.oneof(validClientId, nastyText, wrongType), role: badRole },
    required: [],
  },
  {
    name: "read stream",
    method: "GET",
    path: fc.tuple(fc.constant("streams"), streamSegment),
  },
  {
    name: "chunks",
    method: "POST",
    path: fc.tuple(fc.constant("streams"), streamSegment, fc.constant("chunks")),
    valid: [{ index: fc.nat({ max: 6 }), delta: validContent }],
    hostile: {
      index: fc.oneof(fc.nat({ max: 6 }), fc.constantFrom(-1, 1.5, "0", 2 ** 60)),
      delta: textField,
      chunks: fc.oneof(
        consecutiveChunks.map((c) => c.chunks),
        fc.array(chunk, { maxLength: 4 }),
        fc.constant(Array.from({ length: 501 }, (_, index) => ({ index, delta: "d" }))),
        wrongType,
      ),
    },
    required: [],
  },
  {
    name: "finish",
    method: "POST",
    path: fc.tuple(fc.constant("streams"), streamSegment, fc.constant("finish")),
    valid: [{}, { content: validContent }],
    hostile: { content: textField },
    required: [],
  },
  {
    name: "fail",
    method: "POST",
    path: fc.tuple(fc.constant("streams"), streamSegment, fc.constant("fail")),
    valid: [{}, { message: plainText }],
    hostile: { message: fc.oneof(textField, fc.constant("m".repeat(501))) },
    required: [],
  },
];

/** A body as sent: JSON of a value, or raw text or bytes. */
type Body =
  | { kind: "json"; value: unknown }
  | { kind: "text"; text: string }
  | { kind: "bytes"; bytes: Uint8Array }
  | { kind: "deep"; field: string; depth: number; base: unknown }
  | { kind: "huge"; bytes: number };

const rawBody: fc.Arbitrary<Body> = fc.oneof(
  fc.constantFrom<Body>(
    { kind: "text", text: "" },
    { kind: "text", text: "   " },
    { kind: "text", text: "{" },
    { kind: "text", text: "null" },
    { kind: "text", text: "[]" },
    { kind: "text", text: '"str"' },
    { kind: "text", text: "1e999" },
    { kind: "text", text: '{"a":1,"a":2}' },
    { kind: "text", text: '{"__proto__":{"polluted":"yes"}}' },
    { kind: "text", text: '{"constructor":{"prototype":{"polluted":"yes"}}}' },
    { kind: "text", text: "\ufeff{}" },
    { kind: "text", text: '{"content":"\\ud800","clientId":"x"}' },
    { kind: "text", text: '{"content":"\\u0000","clientId":"x"}' },
  ),
  fc.string({ maxLength: 60 }).map((text): Body => ({ kind: "text", text })),
  fc.uint8Array({ minLength: 1, maxLength: 64 }).map((bytes): Body => ({ kind: "bytes", bytes })),
  fc.constantFrom<Body>(
    { kind: "bytes", bytes: new Uint8Array([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d]) },
    { kind: "bytes", bytes: new Uint8Array([0xc0, 0xaf]) },
  ),
);

function bodyFor(spec: RouteSpec): fc.Arbitrary<Body> {
  const hostile = spec.hostile ?? {};
  const { valid: validRecord, oneHostile } = modelPayloads({
    valid: spec.valid ?? [{}],
    hostile,
    required: spec.required ?? [],
  });
  const allHostile = fc
    .tuple(fc.record(hostile, { requiredKeys: [] }), mutation, fc.nat())
    .map(([p, m, pick]) => mutate(compact(p as Record<string, unknown>), m, pick));
  return fc.oneof(
    { weight: 6, arbitrary: validRecord.map((v): Body => ({ kind: "json", value: compact(v) })) },
    { weight: 4, arbitrary: oneHostile.map((v): Body => ({ kind: "json", value: compact(v) })) },
    { weight: 3, arbitrary: allHostile.map((value): Body => ({ kind: "json", value })) },
    {
      weight: 1,
      arbitrary: fc.oneof(anyValue, hugeText).map((value): Body => ({ kind: "json", value })),
    },
    {
      weight: 1,
      arbitrary: fc
        .tuple(
          validRecord,
          fc.constantFrom(...Object.keys(hostile), "extra"),
          fc.oneof(fc.integer({ min: 10, max: 2000 }), fc.integer({ min: 2000, max: 200_000 })),
        )
        .map(([base, field, depth]): Body => ({ kind: "deep", field, depth, base: compact(base) })),
    },
    { weight: 1, arbitrary: rawBody },
    {
      weight: 1,
      arbitrary: fc.constantFrom<Body>(
        { kind: "huge", bytes: SERVICE_MAX_BODY + 1 },
        { kind: "huge", bytes: SERVICE_MAX_BODY - 100 },
      ),
    },
  );
}

/** The bytes of a body, with the refs in it resolved. */
function encodeBody(body: Body, resolved: Pools): Buffer {
  switch (body.kind) {
    case "json":
      return Buffer.from(JSON.stringify(resolveRefs(body.value, resolved)) ?? "null");
    case "text":
      return Buffer.from(body.text);
    case "bytes":
      return Buffer.from(body.bytes);
    case "deep": {
      // Built as text: deeper than JSON.stringify could go.
      const base = JSON.stringify(resolveRefs(body.base, resolved));
      const deep = `${"[".repeat(body.depth)}${"]".repeat(body.depth)}`;
      const head = base === "{}" ? "{" : `${base.slice(0, -1)},`;
      return Buffer.from(`${head}${JSON.stringify(body.field)}:${deep}}`);
    }
    case "huge":
      return Buffer.from(`{"content":"${"h".repeat(body.bytes - 30)}","clientId":"h"}`);
  }
}

interface ServiceStep {
  /** Which of the two nodes answers. */
  node: 0 | 1;
  kind: "service";
  route: string;
  method: string;
  path: unknown[];
  query: string;
  auth: Auth;
  body: Body | undefined;
}

const serviceStep: fc.Arbitrary<ServiceStep> = fc.constantFrom(...routes).chain((spec) =>
  fc.record({
    kind: fc.constant("service" as const),
    node: fc.constantFrom(0 as const, 1 as const),
    route: fc.constant(spec.name),
    method: fc.oneof(
      { weight: 12, arbitrary: fc.constant(spec.method) },
      {
        weight: 1,
        arbitrary: fc.constantFrom("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"),
      },
    ),
    path: spec.path,
    query:
      spec.query ??
      fc.oneof(
        { weight: 6, arbitrary: fc.constant("") },
        { weight: 1, arbitrary: fc.constantFrom("x=1", "__proto__=1", "a=%zz") },
      ),
    auth: authArbitrary,
    body: spec.method === "POST" ? bodyFor(spec) : fc.constant(undefined),
  }),
);

/** Paths under /service that match no route, and requests to the bare prefixes. */
const strayServiceStep: fc.Arbitrary<ServiceStep> = fc.record({
  kind: fc.constant("service" as const),
  node: fc.constantFrom(0 as const, 1 as const),
  route: fc.constant("stray"),
  method: fc.constantFrom("GET", "POST", "PUT", "DELETE"),
  path: fc.oneof(
    fc.array(fc.oneof(fc.constantFrom("users", "chats", "streams", "v2", ""), badSegment), {
      maxLength: 5,
    }),
    fc.tuple(fc.constant("users"), ref("attacker"), fc.constant("chats"), ref("own")),
  ),
  query: fc.constant(""),
  auth: authArbitrary,
  body: fc.option(rawBody, { nil: undefined }),
});

// Webhooks -------------------------------------------------------------------------------------

type Signing =
  | "valid"
  | "none"
  | "no-id"
  | "no-timestamp"
  | "no-signature"
  | "bad-signature"
  | "other-secret"
  | "stale"
  | "future"
  | "tampered"
  | "garbage-timestamp"
  | "rotated";

interface WebhookStep {
  /** Which of the two nodes answers. */
  node: 0 | 1;
  kind: "webhook";
  method: string;
  signing: Signing;
  body: { kind: "event"; type: string; data: unknown } | Body;
}

const ghostId = fc.oneof(
  { weight: 3, arbitrary: ref("ghost") },
  { weight: 1, arbitrary: ref("oddGhost") },
  { weight: 2, arbitrary: fc.stringMatching(/^[a-z0-9]{6,10}$/).map((s) => `user_ghost_${s}`) },
);
const clerkString = fc.oneof(
  { weight: 4, arbitrary: plainText },
  { weight: 2, arbitrary: nastyText },
  { weight: 1, arbitrary: hugeText },
  // Long and incompressible: too big for an index entry, unlike the repetitive hugeText.
  {
    weight: 1,
    arbitrary: fc
      .uint8Array({ minLength: 6000, maxLength: 6000 })
      .map((b) => Buffer.from(b).toString("base64")),
  },
  { weight: 1, arbitrary: wrongType },
);
const clerkUserData = fc.record(
  {
    id: fc.oneof(
      { weight: 6, arbitrary: ghostId },
      { weight: 2, arbitrary: ref("attacker") },
      { weight: 1, arbitrary: clerkString },
    ),
    object: fc.constant("user"),
    primary_email_address_id: fc.oneof(fc.constant("idn_1"), fc.constant(null), clerkString),
    email_addresses: fc.oneof(
      fc.constant([{ id: "idn_1", object: "email_address", email_address: "a@example.com" }]),
      clerkString.map((email) => [{ id: "idn_1", email_address: email }]),
      fc.array(anyValue, { maxLength: 2 }),
      wrongType,
    ),
    image_url: fc.oneof(fc.constant("https://img.example/a.png"), clerkString, fc.constant(null)),
    extra: anyValue,
  },
  { requiredKeys: ["id"] },
);
const webhookEvent = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.record({
      kind: fc.constant("event" as const),
      type: fc.constantFrom("user.created", "user.updated"),
      data: fc.oneof({ weight: 5, arbitrary: clerkUserData }, { weight: 1, arbitrary: anyValue }),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant("event" as const),
      type: fc.constant("user.deleted"),
      data: fc.oneof(
        {
          weight: 5,
          arbitrary: fc.record({ id: fc.oneof(ghostId, clerkString), deleted: fc.constant(true) }),
        },
        { weight: 1, arbitrary: anyValue },
      ),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant("event" as const),
      type: fc.constantFrom("session.revoked", "session.ended", "session.removed"),
      data: fc.oneof(
        {
          weight: 5,
          arbitrary: fc.record(
            {
              id: fc.oneof(fc.constant(`sess_${randomBytes(4).toString("hex")}`), clerkString),
              user_id: fc.oneof(ghostId, clerkString, fc.constant(null)),
            },
            { requiredKeys: ["id"] },
          ),
        },
        { weight: 1, arbitrary: anyValue },
      ),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant("event" as const),
      type: fc.oneof(
        fc.constantFrom("email.created", "organization.created", "", "__proto__"),
        nastyText,
      ),
      data: anyValue,
    }),
  },
);

const webhookStep: fc.Arbitrary<WebhookStep> = fc.record({
  kind: fc.constant("webhook" as const),
  node: fc.constantFrom(0 as const, 1 as const),
  method: fc.oneof(
    { weight: 12, arbitrary: fc.constant("POST") },
    { weight: 1, arbitrary: fc.constantFrom("GET", "PUT", "DELETE") },
  ),
  signing: fc.oneof(
    { weight: 8, arbitrary: fc.constant<Signing>("valid") },
    {
      weight: 6,
      arbitrary: fc.constantFrom<Signing>(
        "none",
        "no-id",
        "no-timestamp",
        "no-signature",
        "bad-signature",
        "other-secret",
        "stale",
        "future",
        "tampered",
        "garbage-timestamp",
        "rotated",
      ),
    },
  ),
  body: fc.oneof(
    { weight: 8, arbitrary: webhookEvent },
    { weight: 1, arbitrary: rawBody },
    {
      weight: 1,
      arbitrary: fc.constantFrom<Body>({ kind: "huge", bytes: WEBHOOK_MAX_BODY + 1 }),
    },
  ),
});

// Everything else --------------------------------------------------------------------------------

interface PlainStep {
  /** Which of the two nodes answers. */
  node: 0 | 1;
  kind: "plain";
  method: string;
  path: string;
  body: Body | undefined;
}

const plainStep: fc.Arbitrary<PlainStep> = fc.oneof(
  fc.record({
    kind: fc.constant("plain" as const),
    node: fc.constantFrom(0 as const, 1 as const),
    method: fc.oneof(
      { weight: 6, arbitrary: fc.constant("GET") },
      { weight: 1, arbitrary: fc.constantFrom("HEAD", "POST", "PUT", "DELETE", "OPTIONS") },
    ),
    path: fc.constantFrom("/healthz", "/readyz", "/metrics", "/healthz?x=1", "/metrics/", "/"),
    body: fc.constant(undefined),
  }),
  fc.record({
    kind: fc.constant("plain" as const),
    node: fc.constantFrom(0 as const, 1 as const),
    method: fc.oneof(
      { weight: 6, arbitrary: fc.constant("POST") },
      { weight: 1, arbitrary: fc.constant("GET") },
    ),
    path: fc.constant("/dev/token"),
    body: fc.oneof(
      {
        weight: 4,
        arbitrary: fc
          .oneof(
            fc.stringMatching(/^[A-Za-z0-9_-]{1,64}$/),
            fc.constantFrom("u".repeat(65), "", "user alice", "user/../x", "__proto__"),
            nastyText,
            wrongType,
          )
          .map((userId): Body => ({ kind: "json", value: { userId } })),
      },
      { weight: 1, arbitrary: rawBody },
      { weight: 1, arbitrary: fc.constant<Body>({ kind: "huge", bytes: 5000 }) },
    ),
  }),
  fc.record({
    kind: fc.constant("plain" as const),
    node: fc.constantFrom(0 as const, 1 as const),
    method: fc.constantFrom("GET", "POST", "PUT", "DELETE"),
    path: fc.oneof(
      fc.constantFrom(
        "/nope",
        "/service",
        "/service/",
        "/webhooks",
        "/webhooks/clerk/",
        "/%",
        "/..%2f",
        "/dev",
        "/socket.io",
        "//healthz",
        "//",
        "///",
        "//:99999",
        "//[::1",
        "/\\",
      ),
      fc.webPath().map((p) => (p.startsWith("/") ? p : `/${p}`)),
    ),
    body: fc.option(rawBody, { nil: undefined }),
  }),
  // Engine.IO's own HTTP requests (long-polling): bad versions, transports, sessions, packets.
  fc.record({
    kind: fc.constant("plain" as const),
    node: fc.constantFrom(0 as const, 1 as const),
    method: fc.constantFrom("GET", "POST", "OPTIONS"),
    path: fc
      .tuple(
        fc.constantFrom("EIO=4", "EIO=3", "EIO=x", ""),
        fc.constantFrom("transport=polling", "transport=websocket", "transport=x", ""),
        fc.constantFrom("", "sid=nope", "sid=%00", "j=1"),
      )
      .map((parts) => `/socket.io/?${parts.filter(Boolean).join("&")}`),
    body: fc.option(
      fc.oneof(
        rawBody,
        fc.constantFrom<Body>(
          { kind: "text", text: "40" },
          { kind: "text", text: "4" },
          { kind: "text", text: '42["chat:list",{}]' },
          { kind: "text", text: "1\u001e1\u001e1" },
          { kind: "text", text: "b4AAAA" },
        ),
      ),
      { nil: undefined },
    ),
  }),
);

type Step = ServiceStep | WebhookStep | PlainStep;

const step: fc.Arbitrary<Step> = fc.oneof(
  { weight: 10, arbitrary: serviceStep },
  { weight: 1, arbitrary: strayServiceStep },
  { weight: 3, arbitrary: webhookStep },
  { weight: 2, arbitrary: plainStep },
);

const runArbitrary = fc.array(fc.array(step, { minLength: 1, maxLength: 4 }), {
  minLength: 1,
  maxLength: 3,
});

// ---------------------------------------------------------------------------------------------
// Sending and checking

interface Answer {
  status: number;
  headers: Headers;
  text: string;
  json: unknown;
}

const short = (text: string) => (text.length > 300 ? `${text.slice(0, 300)}…` : text);

async function send(
  method: string,
  path: string,
  headers: Record<string, string>,
  body: Buffer | undefined,
  node: 0 | 1 = 0,
): Promise<Answer> {
  const res = await fetch(`${(nodes[node] as TestServer).url}${path}`, {
    method,
    headers,
    ...(body !== undefined && method !== "GET" && method !== "HEAD"
      ? { body: new Uint8Array(body) }
      : {}),
    signal: AbortSignal.timeout(10_000),
  });
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, text, json };
}

/** An error answer: `{ error }` only, a code from the closed set matching the status. */
function expectErrorAnswer(answer: Answer, echoes: readonly string[], where: string) {
  expect(answer.json, `${where}: error body is not JSON: ${short(answer.text)}`).toBeTypeOf(
    "object",
  );
  const body = answer.json as { error?: { code: string } };
  expect(Object.keys(body ?? {}), `${where}: ${short(answer.text)}`).toEqual(["error"]);
  expectProtocolError(body.error, echoes, where);
  const code = body.error?.code as ErrorCode;
  if (answer.status === 413) expect(code, where).toBe(ErrorCode.INVALID_PAYLOAD);
  else expect(answer.status, `${where}: status of ${code}`).toBe(statusOf[code]);
}

function count(family: string, status: number) {
  const key = `${family} ${status}`;
  tally.set(key, (tally.get(key) ?? 0) + 1);
}

/** Resolves a path of segments and refs to the path sent, and the user it names (if any). */
function resolvePath(path: unknown[]): { sent: string; userId: string | undefined } {
  const parts = resolveRefs(path, pools as Pools) as string[];
  // Ids from the pools are encoded as a client would; the other segments are sent as generated.
  const encoded = parts.map((p, i) => (path[i] instanceof Ref ? encodeURIComponent(p) : p));
  const userIndex = parts[0] === "users" ? 1 : -1;
  return {
    sent: `/service/v1/${encoded.join("/")}`,
    userId: userIndex > 0 ? parts[userIndex] : undefined,
  };
}

async function runService(s: ServiceStep): Promise<void> {
  const { sent, userId: named } = resolvePath(s.path);
  const url = s.query ? `${sent}?${s.query}` : sent;
  const body = s.body ? encodeBody(s.body, pools as Pools) : undefined;
  const headers: Record<string, string> = {};
  if (s.auth.header !== undefined) headers.authorization = s.auth.header;
  if (body) headers["content-type"] = "application/json";
  const request = `${s.method} ${url} ${body && body.length < 5000 ? body.toString("utf8") : ""}`;
  const where = `${s.route}: ${short(request)}`;
  const answer = await send(s.method, url, headers, body, s.node);
  count(`service ${s.route}${s.auth.accepted ? "" : " (no key)"}`, answer.status);

  expect(answer.status, `${where}: ${short(answer.text)}`).toBeLessThan(500);
  if (s.method === "HEAD") return;
  const echoes = [...stringsOf(s.path), ...(body ? stringsOf(tryJson(body)) : []), url];
  // Dot segments (`..`, `%2e%2e`) are resolved by the URL parser: the request may have left
  // /service altogether, and then it is just a path that exists nowhere.
  const effective = new URL(url, "http://x").pathname;
  if (effective !== "/service" && !effective.startsWith("/service/")) {
    expect(answer.status, where).toBe(404);
    expectErrorAnswer(answer, echoes, where);
    return;
  }
  if (!s.auth.accepted) {
    expect(answer.status, where).toBe(401);
    expectErrorAnswer(answer, echoes, where);
    expect((answer.json as { error: { code: string } }).error.code).toBe(ErrorCode.UNAUTHORIZED);
    expect(answer.headers.get("www-authenticate"), where).toBe("Bearer");
    return;
  }
  if (answer.status >= 400) expectErrorAnswer(answer, echoes, where);
  else expect(answer.json, `${where}: ${short(answer.text)}`).toBeTypeOf("object");

  // Nothing of the victim in an answer about anybody else.
  if (named !== victim) {
    const leaked = secrets.leakedIn(answer.text, request, answer.status >= 400);
    expect(leaked, `${where}: another user's data in ${short(answer.text)}`).toEqual([]);
  }
  if (answer.status >= 300) return;

  // What was written, for the exact counters.
  const data = answer.json as Record<string, unknown>;
  const sentBody = body ? (tryJson(body) as Record<string, unknown>) : {};
  const owner = named !== undefined ? expected.get(named) : undefined;
  switch (s.route) {
    case "post message":
      if (answer.status === 201) expectationOf(named).storedMessages++;
      break;
    case "token usage":
      if (owner) owner.tokenUsage = (owner.tokenUsage ?? 0) + Number(sentBody.tokens);
      break;
    case "search":
      if (owner) owner.searches = (owner.searches ?? 0) + 1;
      break;
    case "start stream": {
      const { stream } = data as { stream: { streamId: string; userId: string } };
      expect(stream.userId, where).toBe(named);
      streamOwner.set(stream.streamId, stream.userId);
      if (!pools.stream?.includes(stream.streamId)) pools.stream?.push(stream.streamId);
      break;
    }
    case "finish":
      if (answer.status === 201) {
        const streamId = (resolveRefs(s.path, pools as Pools) as string[])[1] as string;
        expectationOf(streamOwner.get(streamId)).storedMessages++;
      }
      break;
  }
}

function expectationOf(clerkId: string | undefined): UserExpectation {
  const e = clerkId !== undefined ? expected.get(clerkId) : undefined;
  if (!e) throw new Error(`a write succeeded for an unexpected user ${clerkId}`);
  return e;
}

function tryJson(body: Buffer): unknown {
  try {
    return JSON.parse(body.toString("utf8"));
  } catch {
    return body.toString("utf8");
  }
}

async function runWebhook(w: WebhookStep): Promise<void> {
  const text =
    w.body.kind === "event"
      ? JSON.stringify({
          data: resolveRefs(w.body.data, pools as Pools),
          object: "event",
          type: w.body.type,
          timestamp: Date.now(),
        })
      : encodeBody(w.body, pools as Pools).toString("utf8");
  const id = `msg_${randomBytes(8).toString("hex")}`;
  const now = Math.floor(Date.now() / 1000);
  let timestamp = String(now);
  let signature = svixSignature(SECRET, id, now, text);
  let sentText = text;
  const headers: Record<string, string> = { "content-type": "application/json" };
  switch (w.signing) {
    case "bad-signature":
      signature = `v1,${randomBytes(32).toString("base64")}`;
      break;
    case "other-secret":
      signature = svixSignature(OTHER_SECRET, id, now, text);
      break;
    case "stale":
      timestamp = String(now - 600);
      signature = svixSignature(SECRET, id, now - 600, text);
      break;
    case "future":
      timestamp = String(now + 600);
      signature = svixSignature(SECRET, id, now + 600, text);
      break;
    case "tampered":
      sentText = `${text} `;
      break;
    case "garbage-timestamp":
      timestamp = "soon";
      break;
    case "rotated":
      signature = `v1,${randomBytes(32).toString("base64")} ${signature}`;
      break;
  }
  if (w.signing !== "none" && w.signing !== "no-id") headers["svix-id"] = id;
  if (w.signing !== "none" && w.signing !== "no-timestamp") headers["svix-timestamp"] = timestamp;
  if (w.signing !== "none" && w.signing !== "no-signature") headers["svix-signature"] = signature;
  const where = `webhook ${w.method} ${w.signing}: ${short(sentText)}`;
  const answer = await send(w.method, "/webhooks/clerk", headers, Buffer.from(sentText), w.node);
  count(`webhook ${w.signing}`, answer.status);

  expect(answer.status, `${where}: ${short(answer.text)}`).toBeLessThan(500);
  expect(answer.json, `${where}: ${short(answer.text)}`).toBeTypeOf("object");
  const echoes = [...stringsOf(tryJson(Buffer.from(sentText))), sentText];
  if (answer.status >= 400) expectErrorAnswer(answer, echoes, where);
  const signed = w.signing === "valid" || w.signing === "rotated";
  if (w.method !== "POST") {
    expect(answer.status, where).toBe(404);
    return;
  }
  if (!signed) {
    // Unsigned or badly signed: refused, whatever the body.
    expect([400, 401, 413], `${where}: ${short(answer.text)}`).toContain(answer.status);
    return;
  }
  expect([200, 400, 413], `${where}: ${short(answer.text)}`).toContain(answer.status);
  if (answer.status !== 200 || w.body.kind !== "event") return;
  const data = resolveRefs(w.body.data, pools as Pools) as { id?: unknown };
  if (
    (w.body.type === "user.created" || w.body.type === "user.updated") &&
    typeof data.id === "string"
  ) {
    expect(answer.json, where).toEqual({ received: true, handled: true });
    // Ids the service API accepts in a path go where requests name users; others stay for
    // webhooks (the service API refuses them before any lookup).
    const pool = /^[A-Za-z0-9._:@|-]{1,191}$/.test(data.id) ? "ghost" : "oddGhost";
    if (data.id !== attacker && !pools[pool]?.includes(data.id)) pools[pool]?.push(data.id);
  }
  if (w.body.type === "user.deleted" && typeof data.id === "string") {
    pools.ghost = (pools.ghost ?? []).filter((g) => g !== data.id);
    pools.oddGhost = (pools.oddGhost ?? []).filter((g) => g !== data.id);
  }
}

async function runPlain(p: PlainStep): Promise<void> {
  const body = p.body ? encodeBody(p.body, pools as Pools) : undefined;
  const where = `${p.method} ${p.path} ${body && body.length < 2000 ? body.toString("utf8") : ""}`;
  const answer = await send(
    p.method,
    p.path,
    body ? { "content-type": "application/json" } : {},
    body,
    p.node,
  );
  const family = p.path.startsWith("/socket.io") ? "/socket.io" : p.path;
  count(`plain ${p.method} ${family.length > 20 ? "(path)" : family}`, answer.status);
  expect(answer.status, `${where}: ${short(answer.text)}`).toBeLessThan(500);
  expect(secrets.foundIn(answer.text), `${where}: ${short(answer.text)}`).toEqual([]);
  if (p.method === "HEAD" || p.path.startsWith("/socket.io")) return;
  const path = p.path.split("?")[0];
  if (p.method === "GET" && path === "/healthz") {
    expect([answer.status, answer.json], where).toEqual([200, { status: "ok" }]);
  } else if (p.method === "GET" && path === "/readyz") {
    expect([answer.status, answer.json], where).toEqual([200, { status: "ready", database: "up" }]);
  } else if (p.method === "GET" && path === "/metrics") {
    expect(answer.status, where).toBe(200);
    expect(answer.text, where).toContain("chat_commands_total");
  } else if (p.method === "POST" && path === "/dev/token") {
    const userIdSent =
      p.body?.kind === "json" ? (p.body.value as { userId?: unknown }).userId : undefined;
    const valid = typeof userIdSent === "string" && /^[A-Za-z0-9_-]{1,64}$/.test(userIdSent);
    if (valid) {
      expect(answer.status, `${where}: ${short(answer.text)}`).toBe(200);
      const { token } = answer.json as { token: string };
      expect(claimsOf(token).sub, where).toBe(userIdSent);
    } else {
      expect(answer.status, `${where}: ${short(answer.text)}`).toBe(400);
      expectErrorAnswer(answer, stringsOf(p.body), where);
    }
  } else if (answer.status >= 400) {
    expectErrorAnswer(answer, [p.path], where);
  }
}

function runStep(s: Step): Promise<void> {
  switch (s.kind) {
    case "service":
      return runService(s);
    case "webhook":
      return runWebhook(s);
    case "plain":
      return runPlain(s);
  }
}

async function afterRun(victimBefore: Awaited<ReturnType<typeof snapshotUser>>): Promise<void> {
  // 1. Alive, and a well-behaved socket still gets a correct answer.
  for (const node of [0, 1] as const) {
    const health = await send("GET", "/healthz", {}, undefined, node);
    expect([health.status, health.json], `node ${node}`).toEqual([200, { status: "ok" }]);
  }
  const [mine, theirs] = await Promise.all([
    ok(attackerSocket, "user:stats", {}),
    ok(victimSocket, "chat:list", {}),
  ]);
  expect(theirs.chats.map((c) => c.id).sort()).toEqual([...victimChats].sort());
  expectPrototypesClean(baseline);

  checkEvents();

  // 3. The database.
  await expectDatabaseInvariants(sql, expected);
  const a = expectation(attacker);
  expect(mine.stats.messageCount).toBe(a.storedMessages);
  expect(mine.stats.totalSearches).toBe(a.searches);
  expect(mine.stats.tokenUsage).toBe(a.tokenUsage);
  expect(await snapshotUser(sql, victim), "the victim's rows changed").toEqual(victimBefore);
}

/** 4. Events: the attacker saw nothing of the victim's; the victim only their own chats. */
function checkEvents(): void {
  for (const e of received) {
    const text = JSON.stringify(e.payload) ?? "";
    if (e.socket === "attacker") {
      expect(secrets.foundIn(text), `attacker received ${e.name} ${short(text)}`).toEqual([]);
    } else {
      const p = e.payload as {
        chatId?: string;
        chat?: { id: string };
        message?: { chatId: string };
      };
      const chatId = p.chatId ?? p.chat?.id ?? p.message?.chatId;
      if (chatId !== undefined) expect(victimChats, `victim received ${e.name}`).toContain(chatId);
    }
  }
  received = [];
}

/**
 * Events from the other node arrive through Redis, after the answers: a message posted through
 * each node, and awaited on the socket of the other, comes after everything that node sent
 * before it. Then the last runs' events are checked too.
 */
async function flushEvents(): Promise<void> {
  for (const [node, socket, who, chatId] of [
    [1, attackerSocket, attacker, pools.own?.[0]],
    [0, victimSocket, victim, victimChats[0]],
  ] as const) {
    const clientId = `flush-${randomBytes(4).toString("hex")}`;
    const arrived = nextEvent(socket, "message:created", (e) => e.message.clientId === clientId);
    const answer = await send(
      "POST",
      `/service/v1/users/${who}/chats/${chatId}/messages`,
      { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
      Buffer.from(JSON.stringify({ clientId, content: "flush" })),
      node,
    );
    expect(answer.status).toBe(201);
    expectation(who).storedMessages++;
    await arrived;
  }
  checkEvents();
  await expectDatabaseInvariants(sql, expected);
}

describe("HTTP endpoints under fuzzing", () => {
  test(
    "every route, with and without the key, signed and unsigned, valid and hostile",
    async () => {
      const passed = await runProperty(
        { file: FILE, name: "every route" },
        runArbitrary,
        async (groups) => {
          const victimBefore = await snapshotUser(sql, victim);
          for (const group of groups) await Promise.all(group.map(runStep));
          await afterRun(victimBefore);
        },
        160,
      );
      expect(passed).toBeGreaterThan(0);
      await flushEvents();
      if (fuzzSettings.runs !== undefined) console.log(outcomes(tally));
      // Every route was answered, and the success paths ran too, not only the refusals.
      for (const r of routes) {
        expect(
          [...tally.keys()].some((k) => k.startsWith(`service ${r.name} `)),
          r.name,
        ).toBe(true);
      }
      expect(expectation(attacker).storedMessages).toBeGreaterThan(0);
      expect(expectation(attacker).tokenUsage).toBeGreaterThan(0);
      expect(pools.stream?.length).toBeGreaterThan(0);
    },
    fuzzTestTimeout(30_000),
  );
});

// ---------------------------------------------------------------------------------------------
// Raw HTTP: request lines and headers that fetch would never send

const rawRequest = fc.record({
  node: fc.constantFrom(0 as const, 1 as const),
  method: fc.constantFrom("GET", "POST", "HEAD", "OPTIONS", "PUT", "TRACE", "GARBAGE", "get", ""),
  target: fc.oneof(
    fc.constantFrom(
      "*",
      "//",
      "///x",
      "/\\",
      "http://evil.example/healthz",
      "http://127.0.0.1:99999/",
      "http://[::1/",
      "/%",
      "/healthz#frag",
      "/healthz?%zz",
      "/service/v1/users/%FF/stats",
      "/socket.io/?EIO=4&transport=polling",
      "/dev/token",
      "/webhooks/clerk",
      "",
    ),
    fc.string({ maxLength: 20 }).map((t) => `/${t}`),
  ),
  version: fc.constantFrom("HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/9.9", ""),
  headers: fc.array(
    fc.constantFrom(
      "Host: 127.0.0.1",
      `Authorization: Bearer ${KEY}`,
      "Content-Type: application/json",
      "Content-Length: 2",
      "Content-Length: -1",
      "Content-Length: 2\r\nContent-Length: 3",
      "Transfer-Encoding: chunked",
      "Transfer-Encoding: gzip, chunked",
      "svix-id: x\r\nsvix-timestamp: 1\r\nsvix-signature: v1,x",
      "X-Bad: a\u0000b",
      "Bad Header: x",
      `X-Long: ${"l".repeat(20_000)}`,
    ),
    { maxLength: 4 },
  ),
  body: fc.constantFrom(
    "",
    "{}",
    "zz",
    "5\r\nhello\r\n0\r\n\r\n",
    "ffffffffff\r\nx",
    '{"userId":"x"}',
  ),
});

/**
 * Writes one raw request and reads until the server closes (`Connection: close` is always sent)
 * or 5 s pass: resolves with what came back.
 */
function rawExchange(text: string, node: 0 | 1 = 0): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect((nodes[node] as TestServer).port, "127.0.0.1");
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      socket.destroy();
      reject(
        new Error(`no answer and no close within 5 s for ${JSON.stringify(text.slice(0, 200))}`),
      );
    }, 5000);
    socket.on("data", (d) => chunks.push(d));
    socket.on("error", () => {});
    socket.on("close", () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks).toString("latin1"));
    });
    socket.end(text);
  });
}

describe("raw HTTP under fuzzing", () => {
  test(
    "malformed request lines, targets and headers never crash the server or get a 5xx",
    async () => {
      const passed = await runProperty(
        { file: FILE, name: "raw HTTP" },
        fc.array(rawRequest, { minLength: 1, maxLength: 3 }),
        async (requests) => {
          const victimBefore = await snapshotUser(sql, victim);
          await Promise.all(
            requests.map(async (r) => {
              const head = [
                `${r.method} ${r.target} ${r.version}`,
                ...r.headers,
                "Connection: close",
              ];
              const text = `${head.join("\r\n")}\r\n\r\n${r.body}`;
              const answer = await rawExchange(text, r.node);
              const status = /^HTTP\/1\.[01] (\d{3})/.exec(answer)?.[1];
              count(`raw ${status ?? "closed"}`, 0);
              if (status !== undefined) {
                expect(Number(status), `${short(text)} → ${short(answer)}`).toBeLessThan(500);
              }
              expect(secrets.foundIn(answer), short(text)).toEqual([]);
            }),
          );
          await afterRun(victimBefore);
        },
        40,
      );
      expect(passed).toBeGreaterThan(0);
    },
    fuzzTestTimeout(30_000),
  );
});

// ---------------------------------------------------------------------------------------------
// Regressions: what the fuzzing found, pinned down

describe("regressions found by fuzzing", () => {
  test("a request target that is not a URL is a 400, and the server keeps serving", async () => {
    for (const target of ["//", "//:99999", "//[::1"]) {
      const answer = await rawExchange(
        `GET ${target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`,
      );
      expect(answer, target).toMatch(/^HTTP\/1\.1 400 /);
      expect(answer, target).toContain('"code":"INVALID_PAYLOAD"');
    }
    const health = await send("GET", "/healthz", {}, undefined);
    expect([health.status, health.json]).toEqual([200, { status: "ok" }]);
  });

  test("search JSON nested too deep or with NUL/lone surrogates is a 400, not a 500; 64 levels are accepted", async () => {
    const post = (body: string) =>
      send(
        "POST",
        `/service/v1/users/${attacker}/searches`,
        { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
        Buffer.from(body),
      );
    const deep = (n: number) => `${"[".repeat(n)}${"]".repeat(n)}`;
    for (const [field, depth] of [
      ["filters", 10_000],
      ["results", 100_000],
      ["results", 65],
    ] as const) {
      const body =
        field === "filters"
          ? `{"filters":{"a":${deep(depth)}},"results":[],"status":"completed"}`
          : `{"filters":{},"results":${deep(depth)},"status":"completed"}`;
      const answer = await post(body);
      expect(answer.status, `${field} ${depth}`).toBe(400);
      expect(
        (answer.json as { error: { details: { path: string }[] } }).error.details,
        field,
      ).toEqual([{ path: field, message: "must not nest deeper than 64 levels" }]);
    }
    for (const body of [
      '{"filters":{},"results":["a\\u0000b"],"status":"completed"}',
      '{"filters":{"q":{"\\u0000":1}},"results":[],"status":"completed"}',
      '{"filters":{"q":"\\ud800"},"results":[],"status":"completed"}',
    ]) {
      const answer = await post(body);
      expect(answer.status, body).toBe(400);
      expect(
        (answer.json as { error: { details: { message: string }[] } }).error.details,
        body,
      ).toMatchObject([{ message: "must not contain NUL or lone surrogates" }]);
    }
    const accepted = await post(
      `{"filters":{"a":${deep(63)}},"results":${deep(64)},"status":"failed"}`,
    );
    expect(accepted.status).toBe(201);
    expectation(attacker).searches = (expectation(attacker).searches ?? 0) + 1;
    await afterRun(await snapshotUser(sql, victim));
  });

  test("signed webhooks: a body that is not a JSON object is a 400 (not 401), unstorable ids and text are a 400 (not 500)", async () => {
    const deliver = (text: string) => {
      const id = `msg_${randomBytes(6).toString("hex")}`;
      const now = Math.floor(Date.now() / 1000);
      return send(
        "POST",
        "/webhooks/clerk",
        {
          "svix-id": id,
          "svix-timestamp": String(now),
          "svix-signature": svixSignature(SECRET, id, now, text),
        },
        Buffer.from(text),
      );
    };
    for (const text of ["", "   ", "null", "[]", '"user.created"', "42"]) {
      const answer = await deliver(text);
      expect(
        [answer.status, (answer.json as { error: { code: string } }).error.code],
        text,
      ).toEqual([400, ErrorCode.INVALID_PAYLOAD]);
    }
    const ghost = `user_regress_${randomBytes(4).toString("hex")}`;
    const user = (data: Record<string, unknown>) =>
      JSON.stringify({ type: "user.created", object: "event", data: { id: ghost, ...data } });
    for (const body of [
      user({ id: "a\u0000b" }),
      user({ id: randomBytes(6000).toString("base64") }),
      user({ id: "u".repeat(192) }),
      user({ image_url: "https://img/\u0000" }),
      user({ image_url: "https://img/\ud800" }),
      user({
        primary_email_address_id: "e1",
        email_addresses: [{ id: "e1", email_address: "a\u0000@example.com" }],
      }),
      JSON.stringify({ type: "user.deleted", object: "event", data: { id: "x\u0000" } }),
    ]) {
      const answer = await deliver(body);
      expect(answer.status, short(body)).toBe(400);
    }
    const [row] = await sql`select count(*)::int as n from users where clerk_id = ${ghost}`;
    expect(row?.n).toBe(0);
    expect((await deliver(user({ image_url: "https://img/ok.png" }))).status).toBe(200);
  });
});

/**
 * Property-based fuzzing of every client socket command against a real server and real
 * socket.io-client sockets: random and adversarial payloads (wrong types, long text, deep
 * nesting, prototype keys, lone surrogates, binary attachments, missing and extra arguments,
 * non-function acks, unknown events, raw frames), mixed with valid ones that use real ids, the
 * attacker's own and another user's. After every run:
 *
 * 1. the server still answers `/healthz` and a well-behaved socket gets a correct ack;
 * 2. every ack had the protocol's shape, with a code from the closed set that fits the command,
 *    and nothing internal in its messages;
 * 3. the database invariants hold (fuzz-support.ts), the counters match what was acked, and the
 *    other users' rows are unchanged;
 * 4. nothing of another user (a marker in all their text, their ids) reached the attacker, in
 *    an ack or an event, except ids the attacker sent itself, and then only in an error.
 *
 * Runs and seed: fuzz-support.ts and docs/fuzzing.md.
 */
import { generateKeyPairSync, randomUUID } from "node:crypto";
import fc from "fast-check";
import type postgres from "postgres";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import {
  type CommandName,
  type CommandResults,
  ConnectErrorCode,
  ErrorCode,
} from "../../protocol/index.js";
import { mintSessionToken } from "../../server/src/auth/dev-keys.js";
import { commandSchemas } from "../../server/src/protocol-schemas.js";
import {
  type ClientSocket,
  startTestServer,
  type TestServer,
  tokenFor,
} from "../helpers/server.js";
import { command, ok, openSql, untyped, userId } from "../realtime/support.js";
import {
  anyValue,
  binaryValue,
  compact,
  deepValue,
  expectDatabaseInvariants,
  expectPrototypesClean,
  expectWellFormedAck,
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
  ref,
  requestText,
  resolveRefs,
  runProperty,
  Secrets,
  snapshotUser,
  stringsOf,
  type UserExpectation,
  wrongType,
} from "./fuzz-support.js";

const FILE = "tests/security/fuzz-socket.test.ts";
/** A lost ack fails the run well before the test's own timeout. */
const ACK_TIMEOUT_MS = 8000;
/** Long-lived tokens: a long `npm run fuzz` must not see its sockets expire. */
const TTL = { ttlSeconds: 3600 };

const COMMANDS = Object.keys(commandSchemas) as CommandName[];
const isCommand = (name: string): name is CommandName => Object.hasOwn(commandSchemas, name);
/** socket.io-client refuses to emit these. */
const CLIENT_RESERVED = new Set([
  "connect",
  "connect_error",
  "disconnect",
  "disconnecting",
  "newListener",
  "removeListener",
]);

/** The error codes each command may answer with on a healthy server. */
const allowedCodes: Record<CommandName, readonly string[]> = {
  "auth:refresh": [
    ErrorCode.INVALID_PAYLOAD,
    ErrorCode.UNAUTHORIZED,
    ErrorCode.TOKEN_EXPIRED,
    ErrorCode.FORBIDDEN,
  ],
  "chat:list": [ErrorCode.INVALID_PAYLOAD],
  "chat:create": [ErrorCode.INVALID_PAYLOAD, ErrorCode.CONFLICT],
  "chat:rename": [ErrorCode.INVALID_PAYLOAD, ErrorCode.NOT_FOUND],
  "chat:delete": [ErrorCode.INVALID_PAYLOAD, ErrorCode.NOT_FOUND],
  "chat:open": [ErrorCode.INVALID_PAYLOAD, ErrorCode.NOT_FOUND],
  "chat:close": [ErrorCode.INVALID_PAYLOAD],
  "message:send": [ErrorCode.INVALID_PAYLOAD, ErrorCode.NOT_FOUND, ErrorCode.CONFLICT],
  "message:history": [ErrorCode.INVALID_PAYLOAD, ErrorCode.NOT_FOUND],
  "message:sync": [ErrorCode.INVALID_PAYLOAD, ErrorCode.NOT_FOUND],
  "user:stats": [ErrorCode.INVALID_PAYLOAD],
  "message:stop": [ErrorCode.INVALID_PAYLOAD, ErrorCode.NOT_FOUND],
};

// ---------------------------------------------------------------------------------------------
// The cast: an attacker with two devices (and a third socket for raw frames), a victim whose
// every title and message carries the marker, and a canary: a well-behaved user.

const marker = newMarker("socket");
const secrets = new Secrets(marker);
const attacker = userId("attacker");
const victim = userId("victim");
const canary = userId("canary");

let server: TestServer;
let sql: postgres.Sql;
let devices: [ClientSocket, ClientSocket];
let victimSocket: ClientSocket;
let canarySocket: ClientSocket;
let canaryChatId: string;
const victimChats: string[] = [];
/** Everything the attacker's sockets received, by socket, since the last check. */
let received: { socket: string; name: string; payload: unknown }[] = [];
/** Events the victim received since the last check. */
let victimReceived: { name: string; payload: unknown }[] = [];
const baseline = prototypeBaseline();

/** Live pools for the symbolic ids in generated payloads. */
const pools: Record<string, string[]> = {
  own: [],
  deleted: [],
  victim: [],
  canary: [],
  cursor: [],
  forgedCursor: [],
  token: [],
  victimClientId: [],
};
/** Chat ids that some `chat:create` acked to the attacker. */
const createdByAttacker = new Set<string>();
const expected = new Map<string, UserExpectation>([
  [attacker, { deletedChats: 0, storedMessages: 0 }],
  [victim, { deletedChats: 0, storedMessages: 0 }],
  [canary, { deletedChats: 0, storedMessages: 0 }],
]);
const expectation = (who: string) => expected.get(who) as UserExpectation;

function record(s: ClientSocket, label: string) {
  s.onAny((name: string, payload: unknown) => received.push({ socket: label, name, payload }));
}

async function connectDevice(label: string): Promise<ClientSocket> {
  const s = await server.connectAs(attacker, TTL);
  record(s, label);
  return s;
}

beforeAll(async () => {
  server = await startTestServer({ commandTimeoutMs: 7000 });
  sql = openSql(server.databaseUrl);

  victimSocket = await server.connectAs(victim, TTL);
  victimSocket.onAny((name: string, payload: unknown) => victimReceived.push({ name, payload }));
  for (let i = 0; i < 3; i++) {
    const { chat } = await ok(victimSocket, "chat:create", { title: `${marker} chat ${i}` });
    victimChats.push(chat.id);
    await ok(victimSocket, "chat:open", { chatId: chat.id });
    for (let j = 0; j < 2; j++) {
      // Not secret: the attacker may reuse another user's client ids in its own chats.
      const clientId = `victim-${i}-${j}`;
      const { message } = await ok(victimSocket, "message:send", {
        chatId: chat.id,
        clientId,
        content: `${marker} message ${i}.${j}`,
      });
      secrets.add(message.id);
      pools.victimClientId?.push(clientId);
      expectation(victim).storedMessages++;
    }
  }
  canarySocket = await server.connectAs(canary, TTL);
  canaryChatId = (await ok(canarySocket, "chat:create", { title: `${marker} canary` })).chat.id;
  await ok(canarySocket, "message:send", {
    chatId: canaryChatId,
    clientId: "canary-1",
    content: `${marker} canary message`,
  });
  expectation(canary).storedMessages++;

  const ids = await sql<{ id: string; clerk_id: string }[]>`
    select id, clerk_id from users where clerk_id in (${victim}, ${canary})`;
  secrets.add(victim, canary, canaryChatId, ...victimChats, ...ids.map((r) => r.id));
  pools.victim = [...victimChats];
  pools.canary = [canaryChatId];
  // Cursors that point into the victim's sidebar: well-formed, but not the attacker's chats.
  const positions = await sql<{ us: string; id: string }[]>`
    select (extract(epoch from updated_at) * 1000000)::bigint::text as us, id
      from chat_sessions where id in ${sql(victimChats)}`;
  pools.forgedCursor = positions.map((p) => Buffer.from(`${p.us}.${p.id}`).toString("base64url"));

  // Tokens for auth:refresh: one good one (another session of the attacker) and every way a
  // token can be wrong, including well-signed ones with claims a verifier must not trust.
  const otherKey = generateKeyPairSync("rsa", {
    modulusLength: 2048,
    publicKeyEncoding: { type: "spki", format: "pem" },
    privateKeyEncoding: { type: "pkcs8", format: "pem" },
  });
  const now = Math.floor(Date.now() / 1000);
  const unsigned = (claims: object) =>
    `${Buffer.from('{"alg":"none","typ":"JWT"}').toString("base64url")}.${Buffer.from(JSON.stringify(claims)).toString("base64url")}.`;
  pools.token = [
    await tokenFor(attacker, TTL),
    await tokenFor(victim, TTL),
    await tokenFor(attacker, { claims: { exp: now - 3600, nbf: now - 7200, iat: now - 7200 } }),
    await tokenFor(attacker, { ...TTL, claims: { nbf: now + 3600 } }),
    await tokenFor(attacker, { ...TTL, authorizedParty: "https://evil.example" }),
    await tokenFor(attacker, { ...TTL, claims: { sub: "" } }),
    await tokenFor(attacker, { ...TTL, claims: { sid: 42 } }),
    // Well signed, with claims no verifier should take at face value.
    await tokenFor(attacker, { claims: { exp: 1e13 } }),
    await tokenFor(attacker, { ...TTL, claims: { sub: `${attacker}\u0000` } }),
    await tokenFor(attacker, { ...TTL, claims: { sub: "s".repeat(200) } }),
    await tokenFor(attacker, { ...TTL, claims: { sub: "user_\ud800" } }),
    await mintSessionToken(otherKey.privateKey, attacker, TTL),
    unsigned({ sub: attacker, exp: now + 3600, azp: "http://localhost:3000" }),
    "not.a.jwt",
  ];

  devices = [await connectDevice("a1"), await connectDevice("a2")];
});

afterAll(async () => {
  await sql?.end({ timeout: 5 });
  await server?.close();
});

// ---------------------------------------------------------------------------------------------
// Arbitraries

/** Chat ids that pass validation: the attacker's own most often, else someone else's. */
const validChatId = fc.oneof(
  { weight: 6, arbitrary: ref("own") },
  { weight: 2, arbitrary: ref("victim") },
  { weight: 1, arbitrary: ref("victim", "upper") },
  { weight: 1, arbitrary: ref("canary") },
  { weight: 1, arbitrary: ref("deleted") },
  { weight: 1, arbitrary: fc.uuid() },
);

const chatIdField = fc.oneof(
  { weight: 6, arbitrary: validChatId },
  { weight: 1, arbitrary: ref("victim", "braced") },
  { weight: 1, arbitrary: ref("own", "suffixed") },
  { weight: 1, arbitrary: wrongType },
  { weight: 1, arbitrary: nastyText },
);

/** Text that passes validation: short, unicode, or exactly at the limit. */
const validText = (max: number) =>
  fc.oneof(
    { weight: 6, arbitrary: plainText },
    {
      weight: 2,
      arbitrary: fc.string({ minLength: 1, maxLength: 30, unit: "grapheme" }).map((t) => `f ${t}`),
    },
    { weight: 1, arbitrary: fc.constant("y".repeat(max)) },
  );

/** Mostly `valid`, else text that must be refused or stored exactly. */
const textField = (valid: fc.Arbitrary<unknown>) =>
  fc.oneof(
    { weight: 3, arbitrary: valid },
    { weight: 2, arbitrary: nastyText },
    { weight: 1, arbitrary: hugeText },
    { weight: 1, arbitrary: fc.constantFrom("", " ", "\n\t ", "\u3000", "\u00a0") },
    { weight: 1, arbitrary: wrongType },
  );

const validClientId = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom("c1", "c2", "c3", "same") },
  { weight: 3, arbitrary: fc.stringMatching(/^[A-Za-z0-9._:-]{1,24}$/) },
  { weight: 1, arbitrary: ref("victimClientId") },
  { weight: 1, arbitrary: fc.constant("x".repeat(128)) },
);

const clientIdField = fc.oneof(
  { weight: 3, arbitrary: validClientId },
  { weight: 1, arbitrary: fc.constantFrom("x".repeat(129), "", "has space", "ü", "a/b") },
  { weight: 1, arbitrary: nastyText },
  { weight: 1, arbitrary: wrongType },
);

const validLimit = fc.integer({ min: 1, max: 200 });
const limitField = fc.oneof(
  { weight: 2, arbitrary: validLimit },
  {
    weight: 2,
    arbitrary: fc.constantFrom(0, -1, 201, 2.5, 1e300, Number.NaN, "10", null, true),
  },
  { weight: 1, arbitrary: wrongType },
);

const validSeq = fc.nat({ max: 30 });
const seqField = fc.oneof(
  { weight: 2, arbitrary: validSeq },
  {
    weight: 2,
    arbitrary: fc.constantFrom(
      -1,
      0.5,
      Number.MAX_SAFE_INTEGER,
      Number.MAX_SAFE_INTEGER + 2,
      2 ** 63,
      "3",
      null,
    ),
  },
  { weight: 1, arbitrary: wrongType },
);

const validCursor = fc.oneof(
  { weight: 3, arbitrary: ref("cursor") },
  { weight: 2, arbitrary: ref("forgedCursor") },
);
const cursorField = fc.oneof(
  { weight: 2, arbitrary: validCursor },
  { weight: 1, arbitrary: fc.base64String({ maxLength: 60 }) },
  { weight: 1, arbitrary: nastyText },
  { weight: 1, arbitrary: wrongType },
);

const tokenField = fc.oneof(
  { weight: 2, arbitrary: ref("token") },
  { weight: 1, arbitrary: nastyText },
  { weight: 1, arbitrary: hugeText },
  { weight: 1, arbitrary: wrongType },
);

/**
 * Each command's payload: valid fields, hostile fields (valid sometimes), and the required ones.
 * `message:history` takes either `before` or `after`; the valid model gives one of them.
 */
const models: Record<CommandName, { valid: Model[]; hostile: Model; required: string[] }> = {
  "auth:refresh": {
    valid: [{ token: ref("token") }],
    hostile: { token: tokenField },
    required: ["token"],
  },
  "chat:list": {
    valid: [{ limit: validLimit, cursor: validCursor }],
    hostile: { limit: limitField, cursor: cursorField },
    required: [],
  },
  "chat:create": {
    valid: [{ id: fc.uuid(), title: validText(200) }],
    hostile: { id: chatIdField, title: textField(validText(200)) },
    required: [],
  },
  "chat:rename": {
    valid: [{ chatId: validChatId, title: validText(200) }],
    hostile: { chatId: chatIdField, title: textField(validText(200)) },
    required: ["chatId", "title"],
  },
  "chat:delete": {
    valid: [{ chatId: validChatId }],
    hostile: { chatId: chatIdField },
    required: ["chatId"],
  },
  "chat:open": {
    valid: [{ chatId: validChatId, limit: validLimit }],
    hostile: { chatId: chatIdField, limit: limitField },
    required: ["chatId"],
  },
  "chat:close": {
    valid: [{ chatId: validChatId }],
    hostile: { chatId: chatIdField },
    required: ["chatId"],
  },
  "message:send": {
    valid: [{ chatId: validChatId, clientId: validClientId, content: validText(64_000) }],
    hostile: {
      chatId: chatIdField,
      clientId: clientIdField,
      content: textField(validText(64_000)),
    },
    required: ["chatId", "clientId", "content"],
  },
  "message:history": {
    valid: [
      { chatId: validChatId, before: validSeq, limit: validLimit },
      { chatId: validChatId, after: validSeq, limit: validLimit },
    ],
    hostile: { chatId: chatIdField, before: seqField, after: seqField, limit: limitField },
    required: ["chatId"],
  },
  "message:sync": {
    valid: [{ chatId: validChatId, afterSeq: validSeq, limit: validLimit }],
    hostile: { chatId: chatIdField, afterSeq: seqField, limit: limitField },
    required: ["chatId", "afterSeq"],
  },
  "user:stats": { valid: [{}], hostile: {}, required: [] },
  "message:stop": {
    valid: [{ chatId: validChatId, streamId: validClientId }],
    hostile: { chatId: chatIdField, streamId: clientIdField },
    required: ["chatId", "streamId"],
  },
};

/**
 * A command's payload: valid (so that the success paths run, with the attacker's and other
 * users' ids), valid but for one hostile field, hostile throughout with a mutation, or not an
 * object at all.
 */
function payloadFor(name: CommandName): fc.Arbitrary<unknown> {
  const { hostile, required } = models[name];
  const { valid: validRecord, oneHostile } = modelPayloads(models[name]);
  const allHostile = fc
    .tuple(
      fc.oneof(
        { weight: 5, arbitrary: fc.record(hostile, { requiredKeys: required }) },
        { weight: 1, arbitrary: fc.record(hostile, { requiredKeys: [] }) },
      ),
      mutation,
      fc.nat(),
    )
    .map(([p, m, pick]) => mutate(compact(p as Record<string, unknown>), m, pick));
  return fc.oneof(
    { weight: 6, arbitrary: validRecord.map(compact) },
    { weight: 4, arbitrary: oneHostile.map(compact) },
    { weight: 4, arbitrary: allHostile },
    { weight: 1, arbitrary: anyValue },
    { weight: 1, arbitrary: fc.oneof(deepValue, binaryValue, hugeText) },
  );
}

const eventName: fc.Arbitrary<string> = fc.oneof(
  { weight: 14, arbitrary: fc.constantFrom(...COMMANDS) },
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      "__proto__",
      "constructor",
      "toString",
      "hasOwnProperty",
      "valueOf",
      "prototype",
      "CHAT:LIST",
      "chat:list ",
      "message:delete",
      "admin:grant",
      "chat:created",
      "message:created",
      "connection:closing",
      "",
    ),
  },
  {
    weight: 1,
    arbitrary: fc.string({ maxLength: 20 }).filter((n) => !CLIENT_RESERVED.has(n) && !isCommand(n)),
  },
);

/** How the command is sent: with an ack callback, without, or with a last argument that is not one. */
type Delivery = { kind: "ack" } | { kind: "none" } | { kind: "tail"; tail: unknown };

interface CommandStep {
  device: 0 | 1;
  name: string;
  args: unknown[];
  delivery: Delivery;
}

const commandStep: fc.Arbitrary<CommandStep> = eventName.chain((name) => {
  const payload = isCommand(name)
    ? payloadFor(name)
    : fc.constantFrom(...COMMANDS).chain(payloadFor);
  return fc.record({
    device: fc.constantFrom(0 as const, 1 as const),
    name: fc.constant(name),
    args: fc.oneof(
      { weight: 10, arbitrary: payload.map((p): unknown[] => [p]) },
      { weight: 1, arbitrary: fc.constant<unknown[]>([]) },
      { weight: 1, arbitrary: fc.tuple(payload, anyValue).map((a): unknown[] => [...a]) },
      { weight: 1, arbitrary: fc.tuple(anyValue, payload).map((a): unknown[] => [...a]) },
    ),
    delivery: fc.oneof(
      { weight: 10, arbitrary: fc.constant<Delivery>({ kind: "ack" }) },
      { weight: 1, arbitrary: fc.constant<Delivery>({ kind: "none" }) },
      {
        weight: 1,
        arbitrary: wrongType.map((tail): Delivery => ({ kind: "tail", tail })),
      },
    ),
  });
});

/** A run: groups of commands; the commands of a group are in flight together. */
const runArbitrary = fc.array(fc.array(commandStep, { minLength: 1, maxLength: 4 }), {
  minLength: 1,
  maxLength: 4,
});

// ---------------------------------------------------------------------------------------------
// Executing and checking

/** Answers by command and outcome, to check that the runs reached every path. */
const tally = new Map<string, number>();
/** Steps socket.io-client could not encode (never sent). */
let skipped = 0;

const short = (text: string) => (text.length > 300 ? `${text.slice(0, 300)}…` : text);

async function runCommand(step: CommandStep): Promise<void> {
  const socket = untyped(devices[step.device]);
  const args = resolveRefs(step.args, pools as Pools);
  // socket.io-client itself cannot encode a few values (an own `__proto__` key holding a Date
  // beside binary data): it throws before sending anything. Those steps are skipped.
  const unsendable = (err: unknown) => {
    if (err instanceof Error && err.message === "operation has timed out") throw err;
    skipped++;
  };
  if (step.delivery.kind !== "ack") {
    const tail = step.delivery.kind === "tail" ? [step.delivery.tail] : [];
    try {
      socket.emit(step.name, ...args, ...tail);
    } catch (err) {
      unsendable(err);
    }
    return;
  }
  const request = requestText(args);
  const where = `${JSON.stringify(step.name)} ${short(request)}`;
  let ack: { ok: true; data: Record<string, unknown> } | { ok: false; error: { code: string } };
  try {
    ack = await socket.timeout(ACK_TIMEOUT_MS).emitWithAck(step.name, ...args);
  } catch (err) {
    unsendable(err);
    return;
  }

  // 2. The protocol's shape, a code that fits the command, nothing internal.
  expectWellFormedAck(ack, stringsOf(args), where);
  if (!isCommand(step.name)) {
    expect(ack, where).toEqual({
      ok: false,
      error: { code: ErrorCode.UNKNOWN_COMMAND, message: "Unknown command" },
    });
    return;
  }
  if (!ack.ok) expect(allowedCodes[step.name], where).toContain(ack.error.code);
  const outcome = `${step.name} ${ack.ok ? "ok" : ack.error.code}`;
  tally.set(outcome, (tally.get(outcome) ?? 0) + 1);

  // 4. Nothing of another user. `chat:close` answers with the id it was given, whoever's it is
  // (closing is leaving a room, allowed for any id); that echo is the only success allowed to
  // carry an id the attacker supplied.
  const echo =
    step.name === "chat:close" &&
    ack.ok &&
    Object.keys(ack.data).join() === "chatId" &&
    typeof ack.data.chatId === "string" &&
    request.toLowerCase().includes(ack.data.chatId.toLowerCase());
  const leaked = secrets.leakedIn(JSON.stringify(ack), request, !ack.ok, echo);
  expect(leaked, `${where}: another user's data in ${short(JSON.stringify(ack))}`).toEqual([]);

  if (!ack.ok) return;
  const data = ack.data as unknown;
  switch (step.name) {
    case "chat:create": {
      const { chat } = data as CommandResults["chat:create"];
      createdByAttacker.add(chat.id);
      break;
    }
    case "chat:delete": {
      const { chatId } = data as CommandResults["chat:delete"];
      expectation(attacker).deletedChats++;
      if (!pools.deleted?.includes(chatId)) pools.deleted?.push(chatId);
      break;
    }
    case "message:send": {
      const { message, duplicate } = data as CommandResults["message:send"];
      expect(message.role, where).toBe("user");
      if (!duplicate) expectation(attacker).storedMessages++;
      break;
    }
    case "chat:list": {
      const { nextCursor } = data as CommandResults["chat:list"];
      if (nextCursor) pools.cursor = [...(pools.cursor ?? []).slice(-4), nextCursor];
      break;
    }
    case "auth:refresh":
      expect((data as CommandResults["auth:refresh"]).userId, where).toBe(attacker);
      break;
  }
}

/** The victim says something new in one of their chats (there is then something to leak). */
let victimSaid = 0;
async function victimSpeaks(): Promise<void> {
  const chatId = victimChats[victimSaid % victimChats.length] as string;
  victimSaid++;
  await ok(victimSocket, "message:send", {
    chatId,
    clientId: `${marker}-said-${victimSaid}`,
    content: `${marker} said ${victimSaid}`,
  });
  expectation(victim).storedMessages++;
}

/** Checks 1, 3 and 4 after a run; refreshes the pools from the database. */
async function afterRun(victimBefore: Awaited<ReturnType<typeof snapshotUser>>): Promise<void> {
  // 1. Alive: liveness, the attacker's own sockets, and a well-behaved user.
  const health = await fetch(`${server.url}/healthz`);
  expect(health.status).toBe(200);
  expect(await health.json()).toEqual({ status: "ok" });
  expect(
    devices.map((d) => d.connected),
    "an attacker socket was disconnected",
  ).toEqual([true, true]);
  // A round trip on each device also means every event sent before it has arrived.
  const stats = await Promise.all(devices.map((d) => ok(d, "user:stats", {})));
  const canaryList = await ok(canarySocket, "chat:list", {});
  expect(canaryList.chats.map((c) => [c.id, c.title])).toEqual([
    [canaryChatId, `${marker} canary`],
  ]);
  await ok(victimSocket, "user:stats", {});
  expectPrototypesClean(baseline);

  // 4. No event of another user reached the attacker; the victim saw only their own chats.
  for (const e of received) {
    const text = JSON.stringify(e.payload) ?? "";
    expect(secrets.foundIn(text), `${e.socket} received ${e.name} ${short(text)}`).toEqual([]);
  }
  received = [];
  for (const e of victimReceived) {
    const p = e.payload as {
      chatId?: string;
      chat?: { id: string };
      message?: { chatId: string };
    };
    const chatId = p.chatId ?? p.chat?.id ?? p.message?.chatId;
    if (chatId !== undefined) expect(victimChats, `victim received ${e.name}`).toContain(chatId);
  }
  victimReceived = [];

  // 3. The database: invariants, exact counters, the attacker's chats all acked, the other
  // users untouched.
  await expectDatabaseInvariants(sql, expected);
  const own = await sql<{ id: string }[]>`
    select c.id from chat_sessions c join users u on u.id = c.user_id
     where u.clerk_id = ${attacker} order by c.created_at, c.id`;
  for (const { id } of own) {
    expect(createdByAttacker.has(id), `chat ${id} exists but no create was acked`).toBe(true);
  }
  const a = expectation(attacker);
  for (const s of stats) {
    expect(s.stats.totalConversations).toBe(own.length + a.deletedChats);
    expect(s.stats.messageCount).toBe(a.storedMessages);
  }
  expect(await snapshotUser(sql, victim), "the victim's rows changed").toEqual(victimBefore);
  pools.own = own.map((r) => r.id);
}

describe("socket commands under fuzzing", () => {
  test(
    "every command, valid or hostile, in any order and concurrently",
    async () => {
      const passed = await runProperty(
        { file: FILE, name: "every command" },
        runArbitrary,
        async (groups) => {
          await victimSpeaks();
          const victimBefore = await snapshotUser(sql, victim);
          for (const group of groups) await Promise.all(group.map(runCommand));
          await afterRun(victimBefore);
        },
        160,
      );
      expect(passed).toBeGreaterThan(0);
      if (fuzzSettings.runs !== undefined) console.log(outcomes(tally), `unsendable=${skipped}`);
      // Every command was answered, and the runs reached the success paths, not only refusals.
      const answered = [...tally.keys()].map((k) => k.split(" ")[0]);
      for (const c of COMMANDS) expect(answered, c).toContain(c);
      expect(createdByAttacker.size).toBeGreaterThan(0);
      expect(expectation(attacker).storedMessages).toBeGreaterThan(0);
    },
    fuzzTestTimeout(30_000),
  );
});

// ---------------------------------------------------------------------------------------------
// Raw frames: what socket.io-client would never build

const RAW_TYPES = ["0", "1", "2", "3", "4", "5", "6", "2/", "2/admin,", "0/nope,", "51-", "52-"];

const jsonText: fc.Arbitrary<string> = fc.oneof(
  fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.stringify(v)),
  fc
    .tuple(fc.oneof(fc.constantFrom(...COMMANDS), fc.jsonValue({ maxDepth: 1 })), anyValue)
    .map(([name, payload]) => requestText([name, payload])),
  fc.integer({ min: 1, max: 50_000 }).map((n) => `${"[".repeat(n)}${"]".repeat(n)}`),
  fc.constantFrom(
    '["message:send",{"_placeholder":true,"num":0}]',
    '["message:send",{"_placeholder":true,"num":-1}]',
    '["message:send",{"_placeholder":true,"num":"0"}]',
    '["chat:create",{"__proto__":{"polluted":"yes"}}]',
    '["__proto__",{}]',
    '["constructor",{"prototype":{"polluted":"yes"}}]',
    "[null,{}]",
    "[]",
    "{}",
  ),
);

const rawPacket: fc.Arbitrary<string> = fc.oneof(
  { weight: 1, arbitrary: fc.string({ maxLength: 40 }) },
  {
    weight: 4,
    arbitrary: fc
      .tuple(fc.constantFrom(...RAW_TYPES), fc.option(fc.nat({ max: 1_000_000 })), jsonText)
      .map(([type, id, json]) => `${type}${id ?? ""}${json}`),
  },
);

/**
 * Sends a packet that must be answered (a `user:stats` with ack id `id`) and resolves "ack" with
 * it, or "closed" when the server closed the connection instead; all data received meanwhile is
 * collected into `into`.
 */
function roundTripOrClose(s: ClientSocket, id: number, into: string[]): Promise<"ack" | "closed"> {
  return new Promise((resolve, reject) => {
    if (!s.connected) {
      resolve("closed");
      return;
    }
    const engine = s.io.engine;
    const prefix = `3${id}[`;
    const finish = (outcome: "ack" | "closed") => {
      clearTimeout(timer);
      engine.off("data", onData);
      s.off("disconnect", onClose);
      resolve(outcome);
    };
    const onData = (d: unknown) => {
      if (typeof d !== "string") return;
      into.push(d);
      if (d.startsWith(prefix)) finish("ack");
    };
    const onClose = () => finish("closed");
    const timer = setTimeout(() => {
      engine.off("data", onData);
      s.off("disconnect", onClose);
      reject(new Error("the server neither answered nor closed the connection"));
    }, 10_000);
    engine.on("data", onData);
    s.on("disconnect", onClose);
    engine.send(`2${id}["user:stats",{}]`);
  });
}

describe("raw frames under fuzzing", () => {
  test(
    "no frame crashes the server, leaks, or writes; at worst it closes that connection",
    async () => {
      let raw = await connectDevice("raw");
      let barrier = 900_000_000;
      let closed = 0;
      const passed = await runProperty(
        { file: FILE, name: "raw frames" },
        fc.array(rawPacket, { minLength: 1, maxLength: 4 }),
        async (packets) => {
          const victimBefore = await snapshotUser(sql, victim);
          if (!raw.connected) raw = await connectDevice("raw");
          const data: string[] = [];
          const onData = (d: unknown) => {
            if (typeof d === "string") data.push(d);
          };
          raw.io.engine.on("data", onData);
          for (const p of packets) raw.io.engine.send(p);
          const outcome = await roundTripOrClose(raw, barrier++, data);
          raw.io.engine.off("data", onData);
          if (outcome === "closed") closed++;
          const sent = packets.join("\n");
          for (const d of data) {
            // Acks to the frames' own ids: the protocol's shape and nothing of another user.
            const m = /^3(\d+)(\[[\s\S]*)$/.exec(d);
            const args = m ? (JSON.parse(m[2] as string) as unknown[]) : [];
            if (m && args.length === 1)
              expectWellFormedAck(args[0], stringsOf(packets), short(sent));
            expect(secrets.leakedIn(d, sent, true), `${short(d)} after ${short(sent)}`).toEqual([]);
          }
          await afterRun(victimBefore);
        },
        80,
      );
      expect(passed).toBeGreaterThan(0);
      // Some frames were answered and some closed their connection: both paths were exercised.
      expect(closed).toBeGreaterThan(0);
      raw.disconnect();
    },
    fuzzTestTimeout(30_000),
  );

  test("unknown and odd event names with an ack are answered UNKNOWN_COMMAND", async () => {
    const names = ["__proto__", "constructor", "toString", "hasOwnProperty", "", "x".repeat(1000)];
    for (const name of names) {
      const ack = await untyped(devices[0]).timeout(ACK_TIMEOUT_MS).emitWithAck(name, {});
      expect(ack, name).toEqual({
        ok: false,
        error: { code: ErrorCode.UNKNOWN_COMMAND, message: "Unknown command" },
      });
    }
    // And a command still works afterwards with a fresh chat id of the attacker's choosing.
    const id = randomUUID();
    const { chat } = await ok(devices[0], "chat:create", { id, title: "after the noise" });
    createdByAttacker.add(chat.id);
    expect(chat.id).toBe(id);
    await afterRun(await snapshotUser(sql, victim));
  });
});

// ---------------------------------------------------------------------------------------------
// The handshake: what a client can put in `auth` and in the Authorization header

const handshake = fc.record({
  auth: fc.oneof(
    { weight: 6, arbitrary: fc.record({ token: tokenField }) },
    { weight: 1, arbitrary: fc.constant({}) },
    {
      weight: 2,
      arbitrary: fc
        .tuple(fc.record({ token: tokenField }), mutation, fc.nat())
        .map(([p, m, pick]) => {
          const mutated = mutate(p, m, pick);
          return typeof mutated === "object" && mutated !== null && !Array.isArray(mutated)
            ? mutated
            : { token: mutated };
        }),
    },
  ),
  header: fc.option(
    fc.oneof(
      ref("token").map((r) => ({ scheme: "Bearer ", token: r })),
      fc.constantFrom(
        { scheme: "Basic ", token: "eDp5" },
        { scheme: "Bearer ", token: "" },
        { scheme: "", token: "x" },
      ),
    ),
    { nil: undefined },
  ),
});

/** Resolves with how the connection attempt ended; rejects if it does not end in 5 s. */
function attempt(
  s: ClientSocket,
): Promise<{ connected: true } | { connected: false; data: unknown }> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error("the handshake neither succeeded nor failed")),
      5000,
    );
    s.once("connect", () => {
      clearTimeout(timer);
      resolve({ connected: true });
    });
    s.once("connect_error", (err: Error & { data?: unknown }) => {
      clearTimeout(timer);
      resolve({ connected: false, data: err.data });
    });
  });
}

const connectCodes = new Set(Object.values(ConnectErrorCode));

describe("the handshake under fuzzing", () => {
  test(
    "any auth payload and header: a connection or a connect_error with a known code",
    async () => {
      const outcomes = new Map<string, number>();
      const passed = await runProperty(
        { file: FILE, name: "handshake" },
        fc.array(handshake, { minLength: 1, maxLength: 3 }),
        async (attempts) => {
          const victimBefore = await snapshotUser(sql, victim);
          await Promise.all(
            attempts.map(async (a) => {
              const auth = resolveRefs(a.auth, pools as Pools) as Record<string, unknown>;
              const header = a.header ? resolveRefs(a.header, pools as Pools) : undefined;
              const s = server.socket(
                auth,
                header
                  ? { extraHeaders: { authorization: `${header.scheme}${header.token}` } }
                  : {},
              );
              const where = `auth ${short(requestText(auth))} header ${short(requestText(header))}`;
              try {
                const outcome = await attempt(s);
                const key = outcome.connected ? "connected" : requestText(outcome.data);
                outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
                if (outcome.connected) return;
                const code = (outcome.data as { code?: string } | undefined)?.code;
                expect(connectCodes.has(code as ConnectErrorCode), `${where}: ${code}`).toBe(true);
                // The database is up: a refusal is about the token, never "unavailable".
                expect(code, where).not.toBe(ConnectErrorCode.UNAVAILABLE);
              } finally {
                s.disconnect();
              }
            }),
          );
          await afterRun(victimBefore);
        },
        40,
      );
      expect(passed).toBeGreaterThan(0);
      expect(outcomes.get("connected")).toBeGreaterThan(0);
    },
    fuzzTestTimeout(30_000),
  );
});

// ---------------------------------------------------------------------------------------------
// Regressions: what the fuzzing found, pinned down

describe("regressions found by fuzzing", () => {
  test("a send racing a delete of its chat is stored or NOT_FOUND, never INTERNAL", async () => {
    const outcomes: Record<string, number> = {};
    for (let i = 0; i < 60; i++) {
      const { chat } = await ok(devices[0], "chat:create", { title: `race ${i}` });
      createdByAttacker.add(chat.id);
      const [deleted, sent] = await Promise.all([
        command(devices[0], "chat:delete", { chatId: chat.id }),
        command(devices[1], "message:send", { chatId: chat.id, clientId: "race", content: "x" }),
      ]);
      expect(deleted.ok).toBe(true);
      expectation(attacker).deletedChats++;
      if (sent.ok) expectation(attacker).storedMessages++;
      const outcome = sent.ok ? "stored" : sent.error.code;
      outcomes[outcome] = (outcomes[outcome] ?? 0) + 1;
    }
    expect(
      Object.keys(outcomes).filter((o) => o !== "stored" && o !== ErrorCode.NOT_FOUND),
    ).toEqual([]);
    await afterRun(await snapshotUser(sql, victim));
  });

  test("well-signed tokens with an absurd exp or an unstorable sub are refused, not INTERNAL/UNAVAILABLE", async () => {
    const farFuture = await tokenFor(attacker, { claims: { exp: 1e13 } });
    const refresh = await untyped(devices[0])
      .timeout(ACK_TIMEOUT_MS)
      .emitWithAck("auth:refresh", { token: farFuture });
    expect(refresh).toMatchObject({ ok: false, error: { code: ErrorCode.UNAUTHORIZED } });

    for (const sub of [`${attacker}\u0000`, "user_\ud800"]) {
      const s = server.socket({ token: await tokenFor(sub, TTL) });
      const outcome = await attempt(s);
      s.disconnect();
      expect(outcome, JSON.stringify(sub)).toEqual({
        connected: false,
        data: { code: ConnectErrorCode.TOKEN_INVALID },
      });
    }
    const far = server.socket({ token: farFuture });
    expect(await attempt(far)).toEqual({
      connected: false,
      data: { code: ConnectErrorCode.TOKEN_INVALID },
    });
    far.disconnect();
    await afterRun(await snapshotUser(sql, victim));
  });
});

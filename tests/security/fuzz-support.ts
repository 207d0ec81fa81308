/**
 * Shared pieces of the property-based fuzz suites (`tests/security/fuzz-*.test.ts`): run
 * settings (seed, number of runs, time budget), adversarial arbitraries, symbolic ids that are
 * resolved against the live state at run time, and the checks every run ends with: answers in
 * the protocol's closed shape, nothing internal and nothing of another user in them, and the
 * database invariants of docs/schema.md, checked with SQL.
 *
 * How to run longer or replay a failure: docs/fuzzing.md.
 */
import { randomBytes } from "node:crypto";
import fc from "fast-check";
import type postgres from "postgres";
import { expect } from "vitest";
import { ErrorCode, Limits } from "../../protocol/index.js";

// ---------------------------------------------------------------------------------------------
// Settings

function envInt(name: string): number | undefined {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return undefined;
  const n = Number(raw);
  if (!Number.isSafeInteger(n)) throw new Error(`${name} must be an integer, got ${raw}`);
  return n;
}

/** Fixed by default so that `npm test` is reproducible; override to explore or to replay. */
export const DEFAULT_SEED = 20_261_125;

export const fuzzSettings = {
  /** FUZZ_SEED: the seed of every property in the run. */
  seed: envInt("FUZZ_SEED") ?? DEFAULT_SEED,
  /** FUZZ_RUNS: runs per property, instead of each property's bounded default. */
  runs: envInt("FUZZ_RUNS"),
  /** FUZZ_PATH: with FUZZ_SEED, jumps straight to a reported counterexample. */
  path: process.env.FUZZ_PATH || undefined,
  /** FUZZ_TIME_LIMIT_MS: stops a property after this long (default: 2 min with FUZZ_RUNS). */
  timeLimitMs:
    envInt("FUZZ_TIME_LIMIT_MS") ?? (envInt("FUZZ_RUNS") !== undefined ? 120_000 : undefined),
  /** FUZZ_SHRINK=1: shrink a counterexample (slow against a stateful server; off by default). */
  shrink: process.env.FUZZ_SHRINK === "1",
};

/** The vitest timeout of a fuzz test: its default, or the time budget plus room to finish. */
export function fuzzTestTimeout(defaultMs: number): number {
  return fuzzSettings.timeLimitMs !== undefined
    ? Math.max(defaultMs, fuzzSettings.timeLimitMs + 60_000)
    : defaultMs;
}

/**
 * Runs one property with the run settings and fails with fast-check's report plus the command
 * line that replays it. Waits for a run still in progress when a time limit interrupted the
 * property, so the next property starts on a quiet server. Returns how many runs passed.
 */
export async function runProperty<T>(
  label: { file: string; name: string },
  arbitrary: fc.Arbitrary<T>,
  predicate: (value: T) => Promise<void>,
  defaultRuns: number,
): Promise<number> {
  let inProgress: Promise<unknown> = Promise.resolve();
  let passed = 0;
  const property = fc.asyncProperty(arbitrary, async (value) => {
    const run = predicate(value);
    inProgress = run.catch(() => {});
    await run;
    passed++;
  });
  const { seed, path, timeLimitMs, shrink } = fuzzSettings;
  const details = await fc.check(property, {
    seed,
    numRuns: fuzzSettings.runs ?? defaultRuns,
    endOnFailure: !shrink,
    ...(path ? { path } : {}),
    ...(timeLimitMs !== undefined ? { plugins: [fc.interruptAfterTimeLimit(timeLimitMs)] } : {}),
  });
  await inProgress;
  if (fuzzSettings.runs !== undefined || timeLimitMs !== undefined) {
    const cut = details.interrupted ? " (time limit reached)" : "";
    console.log(`${label.name}: ${passed} runs passed, seed ${details.seed}${cut}`);
  }
  if (details.failed) {
    const replay =
      `FUZZ_SEED=${details.seed}` +
      (details.counterexamplePath ? ` FUZZ_PATH=${details.counterexamplePath}` : "") +
      ` npx vitest run ${label.file} -t "${label.name}"`;
    const report = condense(fc.defaultReportMessage(details) ?? "property failed");
    const cause = details.errorInstance;
    const why = cause instanceof Error ? cause.message : String(cause);
    console.error(`fuzz failure (seed ${details.seed}); replay with:\n  ${replay}`);
    throw new Error(`${why}\n\n${report}\n\nReplay: ${replay}`, { cause });
  }
  return passed;
}

/** Shortens a report: long repetitions (huge generated strings) become `unit…×count`. */
export function condense(text: string): string {
  const short = text.replace(/(.{1,12}?)\1{15,}/gs, (run: string, unit: string) => {
    return `${unit}…×${run.length / unit.length}`;
  });
  return short.length > 20_000 ? `${short.slice(0, 20_000)}… (report cut)` : short;
}

/** A tally of outcomes as one line per entry, for the long runs' logs. */
export function outcomes(tally: ReadonlyMap<string, number>): string {
  return [...tally]
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, v]) => `${k}: ${v}`)
    .join("\n");
}

// ---------------------------------------------------------------------------------------------
// Symbolic values

/** Pools of real ids, filled at run time (own chats, the victim's chats, tokens, …). */
export type Pools = Record<string, readonly string[]>;

/**
 * A value taken from a pool when the run executes, so that generated payloads can use real ids
 * (the attacker's own chats, the victim's chats) that do not exist when values are generated.
 * `fallback` is used when the pool is empty.
 */
export class Ref {
  constructor(
    readonly pool: string,
    readonly pick: number,
    readonly fallback: string,
    readonly variant: "as-is" | "upper" | "suffixed" | "braced" = "as-is",
  ) {}

  resolve(pools: Pools): string {
    const list = pools[this.pool] ?? [];
    const value = list.length > 0 ? (list[this.pick % list.length] as string) : this.fallback;
    switch (this.variant) {
      case "upper":
        return value.toUpperCase();
      case "suffixed":
        return `${value}x`;
      case "braced":
        return `{${value}}`;
      default:
        return value;
    }
  }

  [fc.toStringMethod](): string {
    return `ref(${this.pool}#${this.pick}${this.variant === "as-is" ? "" : `,${this.variant}`})`;
  }
}

/** A reference into `pool`. */
export function ref(pool: string, variant: Ref["variant"] = "as-is"): fc.Arbitrary<Ref> {
  return fc
    .tuple(fc.nat({ max: 1000 }), fc.uuid())
    .map(([pick, fallback]) => new Ref(pool, pick, fallback, variant));
}

function isPlainObject(v: object): boolean {
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

/**
 * Copies `value` with every Ref replaced by its pool value. Own `__proto__` keys stay own keys
 * (defineProperty, never assignment); binary values, dates, maps and sets are kept as they are.
 */
export function resolveRefs<T>(value: T, pools: Pools): T {
  const walk = (v: unknown, depth: number): unknown => {
    if (v instanceof Ref) return v.resolve(pools);
    // Refs sit near the top; deep values (nested()) hold none and would overflow the stack.
    if (depth > MAX_REF_DEPTH || typeof v !== "object" || v === null) return v;
    if (Array.isArray(v)) return v.map((x) => walk(x, depth + 1));
    if (!isPlainObject(v)) return v;
    const out = Object.create(Object.getPrototypeOf(v)) as Record<string, unknown>;
    for (const key of Object.keys(v)) {
      Object.defineProperty(out, key, {
        value: walk((v as Record<string, unknown>)[key], depth + 1),
        enumerable: true,
        writable: true,
        configurable: true,
      });
    }
    return out;
  };
  return walk(value, 0) as T;
}

const MAX_REF_DEPTH = 8;

/** `obj` with an own property `key` (also for `__proto__`, which assignment would not create). */
export function withOwnKey(obj: object, key: string, value: unknown): Record<string, unknown> {
  const out = Object.create(Object.getPrototypeOf(obj)) as Record<string, unknown>;
  for (const k of Object.keys(obj)) {
    Object.defineProperty(out, k, {
      value: (obj as Record<string, unknown>)[k],
      enumerable: true,
      writable: true,
      configurable: true,
    });
  }
  Object.defineProperty(out, key, { value, enumerable: true, writable: true, configurable: true });
  return out;
}

// ---------------------------------------------------------------------------------------------
// Adversarial values

/** Keys aimed at prototype pollution and at fields a payload must not be able to set. */
export const PROTO_KEYS = ["__proto__", "constructor", "prototype"] as const;

/** Characters that break naive text handling: NUL, lone surrogates, BOM, RTL override, … */
const nastyChar = fc.constantFrom(
  "\u0000",
  "\ud800",
  "\udfff",
  "\ufeff",
  "\u202e",
  "\u2028",
  "\u00a0",
  "\uffff",
  "\ufffd",
  "😀",
  "\u0301",
  "'",
  '"',
  "\\",
  "%",
  "%s",
  "$" + "{x}",
  "\n",
  "\t",
  "<script>",
  "' or '1'='1",
  "é",
);

/** Short text: ordinary characters mixed with the nasty ones. */
export const nastyText: fc.Arbitrary<string> = fc.string({
  unit: fc.oneof(
    { weight: 3, arbitrary: fc.string({ minLength: 1, maxLength: 1, unit: "grapheme" }) },
    { weight: 1, arbitrary: nastyChar },
    { weight: 1, arbitrary: fc.string({ minLength: 1, maxLength: 1, unit: "binary" }) },
  ),
  maxLength: 24,
});

/** Text well under every limit, never blank, never containing a marker string of the tests. */
export const plainText: fc.Arbitrary<string> = fc
  .string({ minLength: 1, maxLength: 24, unit: "grapheme-ascii" })
  .map((s) => `f:${s}`);

/**
 * Long text at and around the limits (200 for titles, 16,384 for tokens, 64,000 for content),
 * some made of characters JSON escapes to six bytes. Bounded so that two of them still fit in
 * one Socket.IO frame (at most 128 KiB each on the wire).
 */
export const hugeText: fc.Arbitrary<string> = fc
  .oneof(
    fc.record({
      length: fc.constantFrom(
        Limits.MAX_TITLE_CHARS,
        Limits.MAX_TITLE_CHARS + 1,
        Limits.MAX_CLIENT_ID_CHARS + 1,
        16_385,
        Limits.MAX_MESSAGE_CHARS,
        Limits.MAX_MESSAGE_CHARS + 1,
        100_000,
      ),
      unit: fc.constantFrom("x", " ", "😀"),
    }),
    fc.record({
      length: fc.constantFrom(Limits.MAX_TITLE_CHARS + 1, 16_385),
      unit: fc.constantFrom("\u0001", "\ud800", "\u0000", "a\ud800"),
    }),
  )
  .map(({ length, unit }) => unit.repeat(Math.ceil(length / unit.length)).slice(0, length));

/**
 * A value `depth` levels deep: {a:{a:…}} or [[…]]. It prints as `nested(depth)` in fast-check's
 * reports (a non-enumerable symbol, invisible on the wire), which would overflow the stack
 * printing it level by level.
 */
export function nested(depth: number, kind: "object" | "array" = "object"): unknown {
  let v: unknown = "leaf";
  for (let i = 0; i < depth; i++) v = kind === "object" ? { a: v } : [v];
  Object.defineProperty(v, fc.toStringMethod, { value: () => `nested(${depth}, ${kind})` });
  return v;
}

export const deepValue: fc.Arbitrary<unknown> = fc
  .tuple(
    fc.integer({ min: 2, max: 3000 }),
    fc.constantFrom("object", "array") as fc.Arbitrary<"object" | "array">,
  )
  .map(([depth, kind]) => nested(depth, kind));

/** Binary values; Socket.IO sends them as binary attachments. */
export const binaryValue: fc.Arbitrary<unknown> = fc.oneof(
  fc.uint8Array({ maxLength: 64 }).map((a) => Buffer.from(a)),
  fc.uint8Array({ maxLength: 64 }),
  fc.constant(new ArrayBuffer(16)),
  fc.float64Array({ maxLength: 4 }),
);

/** Anything at all: wrong types, odd objects (null prototype, Map, Date), proto keys, binaries. */
export const anyValue: fc.Arbitrary<unknown> = fc.anything({
  maxDepth: 3,
  maxKeys: 4,
  key: fc.oneof(
    { weight: 4, arbitrary: fc.string({ maxLength: 8 }) },
    fc.constantFrom(...PROTO_KEYS),
  ),
  values: [
    fc.boolean(),
    fc.integer(),
    fc.double(),
    nastyText,
    fc.constant(null),
    fc.constant(undefined),
    binaryValue,
  ],
  withDate: true,
  withMap: true,
  withSet: true,
  withNullPrototype: true,
  withTypedArray: true,
  withSparseArray: true,
  withBoxedValues: true,
});

/** A value of the wrong type for any field. */
export const wrongType: fc.Arbitrary<unknown> = fc.oneof(
  fc.constantFrom(null, true, false, 0, -1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, [], {}),
  fc.integer(),
  binaryValue,
  fc.array(fc.string({ maxLength: 4 }), { maxLength: 3 }),
);

/**
 * A payload mutation: extra keys (prototype pollution attempts among them), a field replaced by
 * anything, binary inside, the payload wrapped, stringified or nested deep.
 */
export type Mutation =
  | { kind: "none" }
  | { kind: "extra"; key: string; value: unknown }
  | { kind: "replace"; value: unknown }
  | { kind: "wrap" }
  | { kind: "stringify" }
  | { kind: "deep"; depth: number };

export const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  { weight: 10, arbitrary: fc.constant({ kind: "none" } as const) },
  {
    weight: 3,
    arbitrary: fc.record({
      kind: fc.constant("extra" as const),
      key: fc.oneof(
        fc.constantFrom(...PROTO_KEYS, "userId", "role", "seq", "user_id", "dbUserId", "toJSON"),
        fc.string({ maxLength: 10 }),
      ),
      value: fc.oneof(
        anyValue,
        fc.constant({ role: "system", isAdmin: true, polluted: "yes" }),
        fc.constant(JSON.parse('{"__proto__":{"polluted":"yes"}}')),
      ),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({ kind: fc.constant("replace" as const), value: anyValue }),
  },
  { weight: 1, arbitrary: fc.constant({ kind: "wrap" } as const) },
  { weight: 1, arbitrary: fc.constant({ kind: "stringify" } as const) },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant("deep" as const),
      depth: fc.integer({ min: 10, max: 2000 }),
    }),
  },
);

/** Applies a mutation to a generated payload (replace: one field, or the whole payload). */
export function mutate(payload: Record<string, unknown>, m: Mutation, pick = 0): unknown {
  switch (m.kind) {
    case "none":
      return payload;
    case "extra":
      return withOwnKey(payload, m.key, m.value);
    case "replace": {
      const keys = Object.keys(payload);
      const key = keys[pick % Math.max(1, keys.length)];
      return key === undefined ? m.value : withOwnKey(payload, key, m.value);
    }
    case "wrap":
      return [payload];
    case "stringify":
      return JSON.stringify(payload);
    case "deep":
      return withOwnKey(payload, "extra", nested(m.depth));
  }
}

/** Shrinks a generated record away from `undefined` fields (absent, not present-undefined). */
export function compact(record: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(record)) if (v !== undefined) out[k] = v;
  return out;
}

/** A payload's shape for fuzzing: an arbitrary per field. */
export type Model = Record<string, fc.Arbitrary<unknown>>;

/**
 * Payloads of a command or route from its models: `valid` (one of the valid models, its
 * required keys present) and `oneHostile` (a valid one with one field replaced by a hostile
 * value), the two mixes both fuzz files build on.
 */
export function modelPayloads(models: {
  valid: readonly Model[];
  hostile: Model;
  required: readonly string[];
}): {
  valid: fc.Arbitrary<Record<string, unknown>>;
  oneHostile: fc.Arbitrary<Record<string, unknown>>;
} {
  const { hostile, required } = models;
  const valid = fc.oneof(
    ...models.valid.map((model) =>
      fc.record(model, { requiredKeys: required.filter((k) => k in model) }),
    ),
  ) as fc.Arbitrary<Record<string, unknown>>;
  const keys = Object.keys(hostile);
  const oneHostile =
    keys.length === 0
      ? valid
      : fc
          .tuple(valid, fc.constantFrom(...keys))
          .chain(([record, key]) =>
            (hostile[key] as fc.Arbitrary<unknown>).map((v) => ({ ...record, [key]: v })),
          );
  return { valid, oneHostile };
}

// ---------------------------------------------------------------------------------------------
// Answer checks

export const ERROR_CODES: ReadonlySet<string> = new Set(Object.values(ErrorCode));

/** Text that must never reach a client: stack frames, file positions, SQL, driver names. */
const INTERNAL_TEXT: RegExp[] = [
  /\n\s*at\s/,
  /\bat [\w$.<>]+ \(/,
  /\.(ts|js|mjs|cjs):\d+/,
  /node_modules/,
  /\bselect\b[\s\S]*\bfrom\b/i,
  /\binsert into\b/i,
  /\bupdate\s+\S+\s+set\b/i,
  /\bdelete from\b/i,
  /postgres|drizzle|ioredis|pg_/i,
  /violates|duplicate key|syntax error|relation "|column "|invalid input syntax/i,
  /(Type|Range|Reference|Syntax)Error/,
  /\bstack\b/i,
];

/** Every string in a request (keys and values, raw and JSON-escaped): what an answer may echo. */
export function stringsOf(value: unknown): string[] {
  const out = new Set<string>();
  const seen = new Set<unknown>();
  const add = (s: string) => {
    out.add(s);
    out.add(JSON.stringify(s).slice(1, -1));
  };
  const walk = (v: unknown, depth: number) => {
    if (depth > 50) return;
    if (typeof v === "string") add(v);
    else if (typeof v === "number") add(String(v));
    else if (typeof v === "object" && v !== null && !seen.has(v) && !ArrayBuffer.isView(v)) {
      seen.add(v);
      if (Array.isArray(v)) for (const x of v) walk(x, depth + 1);
      else
        for (const k of Object.keys(v)) {
          add(k);
          walk((v as Record<string, unknown>)[k], depth + 1);
        }
    }
  };
  walk(value, 0);
  return [...out].filter((s) => s.length >= 3).sort((a, b) => b.length - a.length);
}

/** The first pattern of internal text found in `text`, after removing what the request echoed. */
export function internalTextIn(text: string, echoes: readonly string[]): string | undefined {
  let rest = text;
  for (const e of echoes) if (rest.includes(e)) rest = rest.split(e).join(" ");
  return INTERNAL_TEXT.find((re) => re.test(rest))?.source;
}

/**
 * Checks a protocol error: a code from the closed set, a non-empty message with nothing
 * internal in it (beyond what the request itself contained), well-formed details.
 */
export function expectProtocolError(error: unknown, echoes: readonly string[], where: string) {
  expect(typeof error, where).toBe("object");
  const e = error as Record<string, unknown>;
  const keys = Object.keys(e).filter(
    (k) => !["code", "message", "details", "retryAfterMs"].includes(k),
  );
  expect(keys, `${where}: unexpected error fields`).toEqual([]);
  expect(
    ERROR_CODES.has(e.code as string),
    `${where}: code ${String(e.code)} is not an ErrorCode`,
  ).toBe(true);
  expect(typeof e.message === "string" && e.message.length > 0, `${where}: message`).toBe(true);
  const texts = [e.message as string];
  if (e.details !== undefined) {
    expect(Array.isArray(e.details), `${where}: details`).toBe(true);
    for (const d of e.details as { path: unknown; message: unknown }[]) {
      expect(typeof d.path, `${where}: details.path`).toBe("string");
      expect(typeof d.message, `${where}: details.message`).toBe("string");
      texts.push(d.message as string);
    }
  }
  if (e.retryAfterMs !== undefined) expect(typeof e.retryAfterMs, where).toBe("number");
  for (const t of texts) {
    const found = internalTextIn(t, echoes);
    expect(found, `${where}: internal text (${found}) in ${JSON.stringify(t)}`).toBeUndefined();
  }
}

/** Checks an ack: exactly `{ ok: true, data }` or `{ ok: false, error }` (see expectProtocolError). */
export function expectWellFormedAck(ack: unknown, echoes: readonly string[], where: string) {
  expect(typeof ack === "object" && ack !== null, `${where}: ack is not an object`).toBe(true);
  const a = ack as Record<string, unknown>;
  if (a.ok === true) {
    expect(Object.keys(a).sort(), where).toEqual(["data", "ok"]);
    expect(typeof a.data === "object" && a.data !== null, `${where}: data`).toBe(true);
  } else {
    expect(a.ok, where).toBe(false);
    expect(Object.keys(a).sort(), where).toEqual(["error", "ok"]);
    expectProtocolError(a.error, echoes, where);
  }
}

/**
 * Another user's data, as strings that must not appear in what the attacker receives: a marker
 * that is part of every title and message of theirs, and their ids.
 */
export class Secrets {
  private readonly values = new Set<string>();

  constructor(readonly marker: string) {
    this.values.add(marker.toLowerCase());
  }

  add(...values: string[]): void {
    for (const v of values) this.values.add(v.toLowerCase());
  }

  /** The secrets that occur in `text` (case-insensitive: UUIDs may come back in either case). */
  foundIn(text: string): string[] {
    const lower = text.toLowerCase();
    return [...this.values].filter((v) => lower.includes(v));
  }

  /**
   * What leaked in an answer: secrets in it, except those the request itself carried when the
   * answer is an error (an error may name what was asked for), or when `echo` allows them.
   */
  leakedIn(answer: string, request: string, isError: boolean, echo = false): string[] {
    const asked = request.toLowerCase();
    return this.foundIn(answer).filter((s) => !((isError || echo) && asked.includes(s)));
  }
}

/** A unique marker for one test file's victim data. */
export function newMarker(label: string): string {
  return `SECRET${label.toUpperCase()}${randomBytes(6).toString("hex")}`;
}

/**
 * JSON text of a request for leak checks and reports: binary as hex, own `__proto__` keys kept.
 * A value too deep to stringify becomes the list of its strings (down to 50 levels).
 */
export function requestText(value: unknown): string {
  try {
    return (
      JSON.stringify(value, (_k, v: unknown) =>
        ArrayBuffer.isView(v) ? Buffer.from(v.buffer).toString("hex") : v,
      ) ?? "undefined"
    );
  } catch {
    return stringsOf(value).join(" ");
  }
}

// ---------------------------------------------------------------------------------------------
// Process checks

/** Own property names of the built-in prototypes, to detect pollution of the server process. */
export function prototypeBaseline(): Record<string, string[]> {
  return {
    object: Object.getOwnPropertyNames(Object.prototype).sort(),
    array: Object.getOwnPropertyNames(Array.prototype).sort(),
    function: Object.getOwnPropertyNames(Function.prototype).sort(),
  };
}

export function expectPrototypesClean(baseline: Record<string, string[]>): void {
  expect(prototypeBaseline(), "a built-in prototype was modified").toEqual(baseline);
  expect(({} as Record<string, unknown>).polluted, "Object.prototype.polluted").toBeUndefined();
}

// ---------------------------------------------------------------------------------------------
// Database invariants

/** What the tests' own bookkeeping says about a user's lifetime counters. */
export interface UserExpectation {
  /** Chats this user deleted (acked). Every chat ever created is live or was deleted. */
  deletedChats: number;
  /** Messages stored for this user (acks with `duplicate: false`, HTTP 201s). */
  storedMessages: number;
  /** Searches recorded for this user (HTTP 201s). */
  searches?: number;
  /** Tokens added for this user (HTTP 200s of token-usage). */
  tokenUsage?: number;
}

/**
 * Checks the invariants of docs/schema.md over the whole database:
 * - per chat: `seq` is exactly 1..n (no gap, no duplicate), `last_seq` = n, `last_message` is the
 *   message of the highest `seq` (null when empty), titles within the protocol's limits;
 * - per message: a known role, storable content within the limits, a well-formed `client_id`;
 * - per user: lifetime counters at least the live rows (`total_searches` equal: searches are
 *   never deleted), `token_usage` ≥ 0, `last_session_id` null or a live chat of theirs;
 * - no orphan messages, chats or searches;
 * - for users in `expected`, the exact counters: `total_conversations` = live chats + deleted
 *   chats, `message_count` = stored messages (and = live messages when nothing was deleted),
 *   `total_searches` and `token_usage` as counted.
 */
export async function expectDatabaseInvariants(
  sql: postgres.Sql,
  expected: ReadonlyMap<string, UserExpectation>,
): Promise<void> {
  const badChats = await sql<Record<string, unknown>[]>`
    with stats as (
      select c.id, c.user_id, c.last_seq, c.last_message, c.title,
             count(m.id)::int as n,
             coalesce(min(m.seq), 0)::int as min_seq,
             coalesce(max(m.seq), 0)::int as max_seq,
             count(distinct m.seq)::int as distinct_seq
        from chat_sessions c left join chat_memory m on m.session_id = c.id
       group by c.id)
    select s.id, s.last_seq::int as last_seq, s.n, s.min_seq, s.max_seq, s.distinct_seq,
           s.last_message,
           (select m.message from chat_memory m where m.session_id = s.id
             order by m.seq desc limit 1) as latest,
           char_length(s.title) as title_length
      from stats s
     where s.last_seq <> s.n or s.max_seq <> s.n or s.distinct_seq <> s.n
        or (s.n > 0 and s.min_seq <> 1)
        or s.last_message is distinct from
           (select m.message from chat_memory m where m.session_id = s.id
             order by m.seq desc limit 1)
        or char_length(s.title) not between 1 and ${Limits.MAX_TITLE_CHARS}
        or s.title ~ '^[ \t\n\r\f\v]*$'`;
  expect(badChats, "chats whose seq, last_seq, last_message or title is wrong").toEqual([]);

  const badMessages = await sql<Record<string, unknown>[]>`
    select id, session_id, seq, client_id, char_length(message->>'content') as length,
           message->>'role' as role
      from chat_memory
     where message->>'role' is null or message->>'role' not in ('user', 'assistant', 'system')
        or jsonb_typeof(message->'content') is distinct from 'string'
        or char_length(message->>'content') not between 1 and ${Limits.MAX_MESSAGE_CHARS}
        or message->>'content' ~ '^[ \t\n\r\f\v]*$'
        or client_id !~ '^[A-Za-z0-9._:-]{1,128}$'
     limit 10`;
  expect(badMessages, "messages the server should never have stored").toEqual([]);

  const [orphans] = await sql<{ messages: number; chats: number; searches: number }[]>`
    select
      (select count(*)::int from chat_memory m
        where not exists (select 1 from chat_sessions c where c.id = m.session_id)) as messages,
      (select count(*)::int from chat_sessions c
        where not exists (select 1 from users u where u.id = c.user_id)) as chats,
      (select count(*)::int from search_sessions s
        where not exists (select 1 from users u where u.id = s.user_id)) as searches`;
  expect(orphans, "orphan rows").toEqual({ messages: 0, chats: 0, searches: 0 });

  const users = await sql<
    {
      clerk_id: string;
      total_conversations: number;
      message_count: number;
      total_searches: number;
      token_usage: string;
      chats: number;
      messages: number;
      searches: number;
      last_session_ok: boolean;
    }[]
  >`
    select u.clerk_id, u.total_conversations, u.message_count, u.total_searches,
           u.token_usage::text as token_usage,
           (select count(*)::int from chat_sessions c where c.user_id = u.id) as chats,
           (select count(*)::int from chat_memory m join chat_sessions c on c.id = m.session_id
             where c.user_id = u.id) as messages,
           (select count(*)::int from search_sessions s where s.user_id = u.id) as searches,
           (u.last_session_id is null or exists (select 1 from chat_sessions c
              where c.id = u.last_session_id and c.user_id = u.id)) as last_session_ok
      from users u`;
  for (const u of users) {
    const who = `user ${u.clerk_id}`;
    expect(
      u.total_conversations,
      `${who}: total_conversations < live chats`,
    ).toBeGreaterThanOrEqual(u.chats);
    expect(u.message_count, `${who}: message_count < live messages`).toBeGreaterThanOrEqual(
      u.messages,
    );
    expect(u.total_searches, `${who}: total_searches`).toBe(u.searches);
    expect(BigInt(u.token_usage) >= 0n, `${who}: token_usage < 0`).toBe(true);
    expect(u.last_session_ok, `${who}: last_session_id points at no chat of theirs`).toBe(true);
    const e = expected.get(u.clerk_id);
    if (!e) continue;
    expect(u.total_conversations, `${who}: total_conversations = live + deleted`).toBe(
      u.chats + e.deletedChats,
    );
    expect(u.message_count, `${who}: message_count = messages stored`).toBe(e.storedMessages);
    if (e.deletedChats === 0) {
      expect(u.message_count, `${who}: message_count = live messages`).toBe(u.messages);
    }
    if (e.searches !== undefined) expect(u.total_searches, `${who}: searches`).toBe(e.searches);
    if (e.tokenUsage !== undefined) {
      expect(u.token_usage, `${who}: token_usage`).toBe(String(e.tokenUsage));
    }
  }
  for (const clerkId of expected.keys()) {
    expect(
      users.some((u) => u.clerk_id === clerkId),
      `user ${clerkId} has no row`,
    ).toBe(true);
  }
}

/** Everything stored for one user, to compare before and after other users' requests. */
export async function snapshotUser(sql: postgres.Sql, clerkId: string) {
  const [user] = await sql`
    select id, email, avatar_url, total_conversations, message_count, total_searches,
           token_usage::text as token_usage, subscription_tier, subscription_status,
           last_session_id
      from users where clerk_id = ${clerkId}`;
  const chats = await sql`
    select c.id, c.title, c.last_message, c.last_seq::int as last_seq,
           (extract(epoch from c.updated_at) * 1000000)::bigint::text as updated_us
      from chat_sessions c join users u on u.id = c.user_id
     where u.clerk_id = ${clerkId} order by c.id`;
  // A digest, not the rows: the victim's history grows with every run of a long fuzz.
  const [messages] = await sql`
    select count(*)::int as n,
           md5(coalesce(string_agg(
             concat_ws('|', m.id, m.session_id, m.seq, m.client_id, m.message::text,
                       (extract(epoch from m.created_at) * 1000000)::bigint),
             ',' order by m.session_id, m.seq), '')) as digest
      from chat_memory m join chat_sessions c on c.id = m.session_id
      join users u on u.id = c.user_id
     where u.clerk_id = ${clerkId}`;
  const searches = await sql`
    select s.id from search_sessions s join users u on u.id = s.user_id
     where u.clerk_id = ${clerkId} order by s.id`;
  return { user, chats, messages, searches };
}

/**
 * The socket layer validates commands with the compiled schemas (`z.compile`); the protocol's
 * refusals are those of the plain schemas. Differential check: for every command, on payloads
 * that are valid, nearly valid and hostile, both accept the same payloads with the same output
 * and refuse the same ones with the same issues (code, path, message), thrown as ZodError.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { ZodError } from "zod";
import { type CommandName, Limits } from "../../protocol/index.js";
import { commandSchemas, compiledCommandSchemas } from "../../server/src/protocol-schemas.js";

const RUNS = Number(process.env.FUZZ_RUNS ?? 1500);

const uuid = fc.uuid().chain((u) => fc.constantFrom(u, u.toUpperCase(), `${u} `, u.slice(1)));
const text = fc.oneof(
  fc.string({ maxLength: 40 }),
  fc.string({ unit: "grapheme", maxLength: 20 }),
  fc.constantFrom(
    "",
    " ",
    "  \t\n",
    "a\u0000b",
    "\ud800",
    "ok\udc00",
    "hello",
    " padded ",
    "x".repeat(Limits.MAX_TITLE_CHARS + 1),
    "y".repeat(Limits.MAX_CLIENT_ID_CHARS + 1),
    "z".repeat(Limits.MAX_MESSAGE_CHARS + 1),
    "ok-id_1.2:3",
    "bad id!",
  ),
);
const value = fc.oneof(
  text,
  uuid,
  fc.integer({ min: -3, max: Limits.MAX_PAGE_SIZE + 3 }),
  fc.double(),
  fc.constantFrom(null, undefined, true, 0, -0, Number.NaN, Number.MAX_SAFE_INTEGER + 2, [], {}),
  fc.anything({ maxDepth: 2 }),
);
const keys = [
  "chatId",
  "clientId",
  "content",
  "title",
  "id",
  "limit",
  "cursor",
  "before",
  "after",
  "afterSeq",
  "streamId",
  "token",
  "extra",
  "__proto__",
];
const payload = fc.oneof(
  fc.dictionary(fc.constantFrom(...keys), value, { maxKeys: 5 }),
  fc.record(
    { chatId: uuid, clientId: text, content: text },
    { requiredKeys: ["chatId", "clientId", "content"] },
  ),
  fc.anything({ maxDepth: 3 }),
);

function outcome(schema: { safeParse(x: unknown): unknown }, input: unknown) {
  const r = schema.safeParse(input) as
    | { success: true; data: unknown }
    | { success: false; error: ZodError };
  return r.success
    ? { ok: true, data: r.data }
    : {
        ok: false,
        zodError: r.error instanceof ZodError,
        issues: r.error.issues.map((i) => ({ code: i.code, path: i.path, message: i.message })),
      };
}

describe("compiled command schemas", () => {
  for (const name of Object.keys(commandSchemas) as CommandName[]) {
    it(`${name}: same acceptance, output and issues as the plain schema`, () => {
      let accepted = 0;
      fc.assert(
        fc.property(payload, (input) => {
          const plain = outcome(commandSchemas[name], input);
          const compiled = outcome(compiledCommandSchemas[name], input);
          expect(compiled).toEqual(plain);
          if (plain.ok) accepted++;
        }),
        { numRuns: RUNS },
      );
      // The generators reach both sides of every schema that accepts random payloads at all.
      if (name === "user:stats" || name === "message:send") expect(accepted).toBeGreaterThan(0);
    });
  }

  it("message:send: a valid payload comes out normalised, a refused one throws ZodError", () => {
    const schema = compiledCommandSchemas["message:send"];
    const chatId = "6F1C2B9E-1234-4ABC-8DEF-0123456789AB";
    expect(schema.parse({ chatId, clientId: "c-1", content: "hi" })).toEqual({
      chatId: chatId.toLowerCase(),
      clientId: "c-1",
      content: "hi",
    });
    expect(() => schema.parse({ chatId, clientId: "c-1", content: "a\u0000" })).toThrow(ZodError);
    expect(() => schema.parse({ chatId, clientId: "c-1", content: "hi", x: 1 })).toThrow(ZodError);
  });
});

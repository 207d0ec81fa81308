/**
 * The server's validation of the wire protocol: a zod schema for every client command, and
 * the building blocks the service API reuses. The contract itself is plain TypeScript in
 * protocol/ (the `@chat-backend/protocol` package, which clients use without zod); the checks
 * at the end of this file fail the build when a schema and its type disagree.
 */
import { z } from "zod";
import {
  type CommandInputs,
  type CommandName,
  type commandNames,
  Limits,
} from "../../protocol/index.js";

// ---------------------------------------------------------------------------------------------
// Building blocks

/** False for text Postgres cannot store (NUL) and broken UTF-16 (lone surrogates). */
export function isStorableText(s: string): boolean {
  return !s.includes("\u0000") && s.isWellFormed();
}

/** A string of at most `max` characters that Postgres can store (see isStorableText). */
export const storableText = (max: number) =>
  z
    .string()
    .max(max)
    .refine((s) => !s.includes("\u0000"), "must not contain NUL characters")
    .refine((s) => s.isWellFormed(), "must be well-formed Unicode");

/**
 * A chat id: a UUID in any letter case, normalised to lower case, the form Postgres returns and
 * the one room names are built from. Without it, a device that opened a chat by its upper-case
 * id would sit in another room and miss the chat's broadcasts.
 */
export const chatIdSchema = z.uuid({ message: "must be a UUID" }).transform((s) => s.toLowerCase());
const chatId = chatIdSchema;
const title = storableText(Limits.MAX_TITLE_CHARS)
  .transform((s) => s.trim())
  .pipe(z.string().min(1, "must not be blank"));
const limit = z.number().int().min(1).max(Limits.MAX_PAGE_SIZE).optional();
const seq = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);

/** A client-generated id: UUIDs, ULIDs and similar. */
export const clientIdSchema = z
  .string()
  .min(1)
  .max(Limits.MAX_CLIENT_ID_CHARS)
  .regex(/^[A-Za-z0-9._:-]+$/, "may contain only letters, digits and . _ : -");

/** Content of a message. */
export const contentSchema = storableText(Limits.MAX_MESSAGE_CHARS).refine(
  (s) => s.trim().length > 0,
  "must not be blank",
);

// ---------------------------------------------------------------------------------------------
// Client commands (the payloads of protocol/index.ts's CommandInputs)

export const commandSchemas = {
  "auth:refresh": z.strictObject({ token: z.string().min(1).max(16_384) }),
  "chat:list": z.strictObject({ limit, cursor: z.string().max(200).optional() }),
  "chat:create": z.strictObject({ id: chatId.optional(), title: title.optional() }),
  "chat:rename": z.strictObject({ chatId, title }),
  "chat:delete": z.strictObject({ chatId }),
  "chat:open": z.strictObject({ chatId, limit }),
  "chat:close": z.strictObject({ chatId }),
  "message:send": z.strictObject({ chatId, clientId: clientIdSchema, content: contentSchema }),
  "message:history": z
    .strictObject({ chatId, before: seq.optional(), after: seq.optional(), limit })
    .refine((p) => p.before === undefined || p.after === undefined, {
      message: "give either before or after, not both",
    }),
  "message:sync": z.strictObject({ chatId, afterSeq: seq, limit }),
  "user:stats": z.strictObject({}),
  "message:stop": z.strictObject({ chatId, streamId: clientIdSchema }),
} as const satisfies { [C in CommandName]: z.ZodType<unknown, CommandInputs[C]> };

/**
 * The same schemas compiled ahead of time (`z.compile`, zod 4.5+): each parse first runs
 * generated, loop-free code and falls back to the schema's own parser only when that refuses,
 * so an accepted payload comes out the same and a refused one gets zod's issues unchanged
 * (same paths, same messages). What the socket layer validates commands with: every command
 * pays it, `message:send` the most (tests/unit/compiled-schemas.test.ts checks that both
 * agree).
 */
export const compiledCommandSchemas: typeof commandSchemas = Object.fromEntries(
  Object.entries(commandSchemas).map(([name, schema]) => [name, z.compile(schema)]),
) as typeof commandSchemas;

/** The payload of a command after validation (what the server's handlers get). */
export type CommandPayload<C extends CommandName> = z.output<(typeof commandSchemas)[C]>;

// ---------------------------------------------------------------------------------------------
// Drift checks: each fails to compile when a schema accepts another shape than the protocol's
// type says (a field added, removed, made optional or retyped on one side only).

type Equals<A, B> =
  (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
type Mismatched = {
  [C in CommandName]: Equals<z.input<(typeof commandSchemas)[C]>, CommandInputs[C]> extends true
    ? never
    : C;
}[CommandName];
/** `never` unless a command's schema and type differ; then the names of those commands. */
export const schemaDrift: [Mismatched] extends [never] ? true : Mismatched = true;
/** Fails when `commandNames` (the run-time list) misses a command. */
export const namesComplete: Equals<(typeof commandNames)[number], CommandName> = true;

/**
 * The service-role HTTP API (docs/service-api.md): the app's own backend posts assistant
 * replies (whole or streamed), adds token usage, records searches and reads a user's history
 * and stats. Authenticated by `SERVICE_API_KEY`; without it the routes do not exist (404).
 *
 * Handlers only parse (zod) and call the services, which hold the rules.
 */
import { createHash, randomUUID, timingSafeEqual } from "node:crypto";
import type { IncomingMessage } from "node:http";
import { z } from "zod";
import { ErrorCode, Limits } from "../../../protocol/index.js";
import type { Logger } from "../logger.js";
import {
  chatIdSchema,
  clientIdSchema,
  contentSchema,
  isStorableText,
  storableText,
} from "../protocol-schemas.js";
import type { AppEventRepository } from "../repositories/app-event.repository.js";
import { AppError, withTimeout } from "../services/errors.js";
import type { ServiceRoleService } from "../services/service-role.service.js";
import type { StreamService } from "../services/stream.service.js";
import type { Inflight } from "../socket/inflight.js";
import {
  invalidJson,
  parseJson,
  readBody,
  sendBodyFailure,
  sendError,
  sendFailure,
} from "./http-json.js";
import { type HttpRoute, sendJson } from "./routes.js";

/** Largest request body: a 64,000-character message as escaped JSON fits with room to spare. */
export const SERVICE_API_MAX_BODY_BYTES = 1024 * 1024;

export interface ServiceApiDeps {
  /** The shared secret; callers send `Authorization: Bearer <key>`. */
  apiKey: string;
  service: ServiceRoleService;
  streams: StreamService;
  /** The outbox: failed webhook deliveries are listed and requeued through it. */
  webhooks: AppEventRepository;
  logger: Logger;
  inflight: Inflight;
  /** A request not done by then is answered 503 UNAVAILABLE (the work itself goes on). */
  timeoutMs: number;
  maxBodyBytes?: number;
  /** Milliseconds the body may take to arrive (408 past it); default DEFAULT_BODY_TIMEOUT_MS. */
  bodyTimeoutMs?: number | undefined;
}

// ---------------------------------------------------------------------------------------------
// Validation

/** Clerk user ids (`user_2abc…`), as they appear in the path. */
const userIdSchema = z
  .string()
  .min(1)
  .max(191)
  .regex(/^[A-Za-z0-9._:@|-]+$/, "must be a Clerk user id");
const replyRole = z.enum(["assistant", "system"]);

const storable = (max: number) => storableText(max).min(1);

/** A webhook's `webhook-id`: `evt_` + uuid; the uuid is what is stored. */
const eventIdSchema = z
  .string()
  .regex(
    /^evt_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i,
    "must be an event id (evt_<uuid>)",
  )
  .transform((id) => id.slice(4).toLowerCase());
const MAX_REQUEUE_IDS = 1000;

const chunk = z.strictObject({
  index: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
  delta: storable(Limits.MAX_MESSAGE_CHARS),
});
const MAX_CHUNKS_PER_REQUEST = 500;

/**
 * Deepest nesting accepted in the JSON stored for a search (`filters`, `results`). Real searches
 * are a few levels deep; without a limit a 1 MiB body can nest so deep that serialising it for
 * the database overflows the stack (a 500 instead of a 400).
 */
export const MAX_JSON_DEPTH = 64;

/**
 * Why `value` cannot be stored as jsonb, or undefined: nested deeper than `maxDepth`, or a
 * string (key or value) with NUL or a lone surrogate, which jsonb refuses. Iterative: any depth.
 */
function unstorableJson(value: unknown, maxDepth: number): string | undefined {
  const stack: [unknown, number][] = [[value, 1]];
  for (let next = stack.pop(); next; next = stack.pop()) {
    const [v, depth] = next;
    if (typeof v === "string" && !isStorableText(v))
      return "must not contain NUL or lone surrogates";
    if (typeof v !== "object" || v === null) continue;
    if (depth > maxDepth) return `must not nest deeper than ${maxDepth} levels`;
    for (const [key, child] of Object.entries(v)) {
      if (!isStorableText(key)) return "must not contain NUL or lone surrogates";
      stack.push([child, depth + 1]);
    }
  }
  return undefined;
}

const storableJson = <T extends z.ZodType>(schema: T) =>
  schema.superRefine((v, ctx) => {
    const problem = unstorableJson(v, MAX_JSON_DEPTH);
    if (problem) ctx.addIssue({ code: "custom", message: problem });
  });

const digits = (max: number) =>
  z
    .string()
    .regex(/^\d{1,16}$/, "must be a non-negative integer")
    .transform(Number)
    .pipe(z.number().int().min(0).max(max));

const schemas = {
  postMessage: z.strictObject({
    clientId: clientIdSchema,
    role: replyRole.default("assistant"),
    content: contentSchema,
  }),
  messagesQuery: z
    .strictObject({
      before: digits(Number.MAX_SAFE_INTEGER).optional(),
      after: digits(Number.MAX_SAFE_INTEGER).optional(),
      limit: digits(Limits.MAX_PAGE_SIZE).pipe(z.number().min(1)).optional(),
    })
    .refine((q) => q.before === undefined || q.after === undefined, {
      message: "give either before or after, not both",
    }),
  chatsQuery: z.strictObject({
    limit: digits(Limits.MAX_PAGE_SIZE).pipe(z.number().min(1)).optional(),
    cursor: z.string().min(1).max(200).optional(),
  }),
  startStream: z.strictObject({
    streamId: clientIdSchema.optional(),
    role: replyRole.default("assistant"),
  }),
  chunks: z.union([
    chunk,
    z.strictObject({
      chunks: z
        .array(chunk)
        .min(1)
        .max(MAX_CHUNKS_PER_REQUEST)
        .refine(
          (list) => list.every((c, i) => i === 0 || c.index === (list[i - 1]?.index ?? 0) + 1),
          "indexes must be consecutive",
        ),
    }),
  ]),
  failedWebhooksQuery: z.strictObject({
    after: eventIdSchema.optional(),
    limit: digits(Limits.MAX_PAGE_SIZE).pipe(z.number().min(1)).optional(),
  }),
  requeueWebhooks: z.union([
    z.strictObject({ all: z.literal(true) }),
    z.strictObject({ ids: z.array(eventIdSchema).min(1).max(MAX_REQUEUE_IDS) }),
  ]),
  finish: z.strictObject({ content: contentSchema.optional() }),
  fail: z.strictObject({ message: storable(500).optional() }),
  tokenUsage: z.strictObject({
    tokens: z
      .number({ message: "must be a number" })
      .int("must be an integer")
      .positive("must be positive")
      .max(
        Number.MAX_SAFE_INTEGER,
        `must be at most ${Number.MAX_SAFE_INTEGER} (Number.MAX_SAFE_INTEGER)`,
      ),
  }),
  search: z.strictObject({
    filters: storableJson(z.record(z.string(), z.unknown())),
    results: storableJson(z.union([z.array(z.unknown()), z.record(z.string(), z.unknown())])),
    resultsCount: z.number().int().min(0).max(2_147_483_647).optional(),
    status: z.enum(["completed", "no_results", "failed"]),
  }),
};

// ---------------------------------------------------------------------------------------------
// Routing

type Params = Record<string, string>;

interface Request {
  params: Params;
  url: URL;
  /** The parsed JSON body (POST only). */
  body: unknown;
  /** Aborts when the request timed out or its connection closed: reads not yet sent are dropped. */
  signal: AbortSignal;
}

/** What a handler answers: a status and a JSON body. */
type Reply = { status: number; body: unknown };

interface Route {
  method: "GET" | "POST";
  pattern: RegExp;
  handle(r: Request): Promise<Reply>;
}

const PARAM_SCHEMAS: Record<string, z.ZodType<string>> = {
  userId: userIdSchema,
  chatId: chatIdSchema,
  streamId: clientIdSchema,
};

function route(method: Route["method"], path: string, handle: Route["handle"]): Route {
  const source = path.replace(/:(\w+)/g, (_, name: string) => `(?<${name}>[^/]+)`);
  return { method, pattern: new RegExp(`^${source}$`), handle };
}

/** Decodes and validates path parameters; INVALID_PAYLOAD lists the bad ones. */
function checkParams(raw: Params): Params {
  const params: Params = {};
  const details: { path: string; message: string }[] = [];
  for (const [name, value] of Object.entries(raw)) {
    let decoded: string;
    try {
      decoded = decodeURIComponent(value);
    } catch {
      details.push({ path: name, message: "is not valid percent-encoding" });
      continue;
    }
    const parsed = (PARAM_SCHEMAS[name] ?? z.string()).safeParse(decoded);
    if (parsed.success) params[name] = parsed.data;
    else details.push({ path: name, message: parsed.error.issues[0]?.message ?? "is invalid" });
  }
  if (details.length > 0) {
    throw new AppError(ErrorCode.INVALID_PAYLOAD, "The path is invalid", { details });
  }
  return params;
}

const param = (r: Request, name: string): string => r.params[name] ?? "";

function routes(deps: ServiceApiDeps): Route[] {
  const { service, streams, webhooks } = deps;
  const base = "/service/v1";
  return [
    route("POST", `${base}/users/:userId/chats/:chatId/messages`, async (r) => {
      const body = schemas.postMessage.parse(r.body);
      const result = await service.postMessage({
        userId: param(r, "userId"),
        chatId: param(r, "chatId"),
        ...body,
      });
      return { status: result.duplicate ? 200 : 201, body: result };
    }),
    route("GET", `${base}/users/:userId/chats/:chatId/messages`, async (r) => {
      const query = schemas.messagesQuery.parse(Object.fromEntries(r.url.searchParams));
      const page = await service.chatMessages(
        param(r, "userId"),
        { chatId: param(r, "chatId"), ...query },
        r.signal,
      );
      return { status: 200, body: page };
    }),
    route("GET", `${base}/users/:userId/chats`, async (r) => {
      const query = schemas.chatsQuery.parse(Object.fromEntries(r.url.searchParams));
      return { status: 200, body: await service.chatList(param(r, "userId"), query, r.signal) };
    }),
    route("GET", `${base}/users/:userId/stats`, async (r) => ({
      status: 200,
      body: { stats: await service.stats(param(r, "userId")) },
    })),
    route("POST", `${base}/users/:userId/token-usage`, async (r) => {
      const { tokens } = schemas.tokenUsage.parse(r.body);
      return { status: 200, body: await service.addTokenUsage(param(r, "userId"), tokens) };
    }),
    route("POST", `${base}/users/:userId/searches`, async (r) => {
      const body = schemas.search.parse(r.body);
      return {
        status: 201,
        body: { search: await service.recordSearch(param(r, "userId"), body) },
      };
    }),
    route("POST", `${base}/users/:userId/chats/:chatId/streams`, async (r) => {
      const body = schemas.startStream.parse(r.body);
      const result = await streams.start({
        userId: param(r, "userId"),
        chatId: param(r, "chatId"),
        streamId: body.streamId ?? randomUUID(),
        role: body.role,
      });
      return { status: result.created ? 201 : 200, body: result };
    }),
    route("GET", `${base}/streams/:streamId`, async (r) => ({
      status: 200,
      body: { stream: await streams.get(param(r, "streamId")) },
    })),
    route("POST", `${base}/streams/:streamId/chunks`, async (r) => {
      const body = schemas.chunks.parse(r.body);
      const list = "chunks" in body ? body.chunks : [body];
      const first = list[0]?.index ?? 0;
      return {
        status: 200,
        body: await streams.append(
          param(r, "streamId"),
          first,
          list.map((c) => c.delta),
        ),
      };
    }),
    route("POST", `${base}/streams/:streamId/finish`, async (r) => {
      const body = schemas.finish.parse(r.body);
      const result = await streams.finish(param(r, "streamId"), body.content);
      return { status: result.duplicate ? 200 : 201, body: result };
    }),
    route("POST", `${base}/streams/:streamId/fail`, async (r) => {
      const body = schemas.fail.parse(r.body);
      return { status: 200, body: await streams.fail(param(r, "streamId"), body.message) };
    }),
    route("GET", `${base}/webhooks/failed`, async (r) => {
      const query = schemas.failedWebhooksQuery.parse(Object.fromEntries(r.url.searchParams));
      const limit = query.limit ?? 50;
      const failed = await webhooks.listFailed({ after: query.after, limit });
      const last = failed.at(-1);
      return {
        status: 200,
        body: { failed, next: failed.length === limit && last ? last.id : null },
      };
    }),
    route("POST", `${base}/webhooks/failed/requeue`, async (r) => {
      const body = schemas.requeueWebhooks.parse(r.body);
      const requeued = await webhooks.requeue("ids" in body ? body.ids : undefined);
      return { status: 200, body: { requeued } };
    }),
  ];
}

// ---------------------------------------------------------------------------------------------
// The handler

/** Compares the presented key with the configured one in constant time (equal-length digests). */
function keyChecker(apiKey: string): (presented: string) => boolean {
  const expected = createHash("sha256").update(apiKey, "utf8").digest();
  return (presented) =>
    timingSafeEqual(createHash("sha256").update(presented, "utf8").digest(), expected);
}

function bearer(req: IncomingMessage): string | undefined {
  const header = req.headers.authorization;
  if (typeof header !== "string") return undefined;
  const match = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(header);
  return match?.[1];
}

export function createServiceApi(deps: ServiceApiDeps): HttpRoute {
  const table = routes(deps);
  const keyMatches = keyChecker(deps.apiKey);
  const maxBodyBytes = deps.maxBodyBytes ?? SERVICE_API_MAX_BODY_BYTES;

  return async (req, res, url) => {
    if (url.pathname !== "/service" && !url.pathname.startsWith("/service/")) return false;
    const started = Date.now();
    const context = { method: req.method, path: url.pathname };
    try {
      const presented = bearer(req);
      if (presented === undefined || !keyMatches(presented)) {
        // Not read: an unauthenticated caller cannot make the server buffer a body.
        res.setHeader("connection", "close");
        sendError(res, {
          code: ErrorCode.UNAUTHORIZED,
          message:
            presented === undefined
              ? "Send the service key as Authorization: Bearer <key>"
              : "The service key is not valid",
        });
        return true;
      }
      let matched: { route: Route; params: Params } | undefined;
      for (const r of table) {
        const m = r.method === req.method ? r.pattern.exec(url.pathname) : null;
        if (m) {
          matched = { route: r, params: { ...m.groups } };
          break;
        }
      }
      if (!matched) {
        sendError(res, { code: ErrorCode.NOT_FOUND, message: "No such route" });
        return true;
      }
      if (deps.inflight.draining) {
        sendError(res, {
          code: ErrorCode.UNAVAILABLE,
          message: "This server is shutting down; retry",
        });
        return true;
      }
      let body: unknown;
      if (req.method === "POST") {
        const read = await readBody(req, res, maxBodyBytes, deps.bodyTimeoutMs);
        if (!read.ok) {
          sendBodyFailure(res, read, maxBodyBytes, deps.bodyTimeoutMs);
          return true;
        }
        const parsed = parseJson(read.text);
        if (!parsed.ok) {
          sendError(res, invalidJson);
          return true;
        }
        body = parsed.value;
      }
      const { route: r, params } = matched;
      const controller = new AbortController();
      const abort = () => controller.abort();
      res.once("close", abort);
      const work = deps.inflight.track(
        (async () =>
          r.handle({ params: checkParams(params), url, body, signal: controller.signal }))(),
      );
      const reply = await withTimeout(work, deps.timeoutMs, abort).finally(() =>
        res.off("close", abort),
      );
      sendJson(res, reply.status, reply.body);
    } catch (err) {
      sendFailure(res, err, context, deps.logger);
    } finally {
      deps.logger.debug(
        { ...context, status: res.statusCode, ms: Date.now() - started },
        "service api",
      );
    }
    return true;
  };
}

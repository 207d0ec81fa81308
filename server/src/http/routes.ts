import type { IncomingMessage, ServerResponse } from "node:http";
import type postgres from "postgres";
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";

/** A group of routes: handles the request and returns true, or returns false when not its own. */
export type HttpRoute = (req: IncomingMessage, res: ServerResponse, url: URL) => Promise<boolean>;

export interface HttpDeps {
  sql: postgres.Sql;
  logger: Logger;
  metrics: Metrics;
  /** True while the node shuts down: readiness fails so that load balancers move away. */
  isDraining: () => boolean;
  /**
   * Development only: mints a dev token for a user id, with `authorizedParty` as its `azp` (the
   * origin of the page that asked). Absent in production.
   */
  mintDevToken?: ((userId: string, authorizedParty: string) => Promise<string>) | undefined;
  /**
   * CORS for the routes a browser page may call (`/healthz`, `/readyz`, `/dev/token`): answers
   * preflights and sets `Access-Control-Allow-Origin` for allowed origins. Not applied to
   * `/metrics`, the service API or webhooks, which servers call.
   */
  browserCors?: ((req: IncomingMessage, res: ServerResponse, next: () => void) => void) | undefined;
  /** Whether a browser origin is allowed (the `azp` of a dev token minted for its page). */
  originAllowed?: ((origin: string | undefined) => boolean) | undefined;
  /**
   * More routes (the service API, webhooks), tried in order before the 404. Read at request
   * time, so the caller may fill the list after creating the handler.
   */
  routes?: readonly HttpRoute[] | undefined;
}

const READY_TIMEOUT_MS = 2000;
const MAX_BODY_BYTES = 4096;
const DEV_USER_ID = /^[A-Za-z0-9_-]{1,64}$/;
/** The paths `browserCors` covers. */
const BROWSER_PATHS = new Set(["/healthz", "/readyz", "/dev/token"]);

/** Runs the CORS middleware; resolves false when it answered the request itself (a preflight). */
function applyCors(
  cors: NonNullable<HttpDeps["browserCors"]>,
  req: IncomingMessage,
  res: ServerResponse,
): Promise<boolean> {
  return new Promise((resolve) => {
    res.once("finish", () => resolve(false));
    cors(req, res, () => resolve(true));
  });
}

/**
 * The `azp` of a development token: the asking page's origin when it is allowed, else the
 * server's own origin as the request addressed it (`Host`), so it follows `PORT`.
 */
function devTokenParty(req: IncomingMessage, deps: HttpDeps): string {
  const origin = req.headers.origin;
  if (origin && deps.originAllowed?.(origin)) return origin;
  const own = `http://${req.headers.host ?? ""}`;
  return URL.canParse(own) ? new URL(own).origin : "http://localhost";
}

export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/json; charset=utf-8",
    "cache-control": "no-store",
    "content-length": Buffer.byteLength(text),
  });
  res.end(text);
}

/** Reads a small JSON body; undefined when it is too large or not JSON. */
export async function readJson(req: IncomingMessage, maxBytes = MAX_BODY_BYTES): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > maxBytes) return undefined;
    chunks.push(chunk as Buffer);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString("utf8"));
  } catch {
    return undefined;
  }
}

/** Checks that the database answers within READY_TIMEOUT_MS. */
async function databaseReady(sql: postgres.Sql): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), READY_TIMEOUT_MS);
  });
  try {
    return await Promise.race([sql`select 1`.then(() => true), timeout]);
  } catch {
    return false;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Plain HTTP routes beside Socket.IO: liveness, readiness, metrics, in development dev tokens,
 * and the routes passed in `deps.routes` (service API, webhooks).
 */
export function createHttpHandler(deps: HttpDeps) {
  return async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    // Any request target reaches here (`//`, `*`, `http://x:99999/`); one that is not a URL
    // must be answered, not thrown: an unhandled rejection stops the process.
    const url = URL.canParse(req.url ?? "/", "http://localhost")
      ? new URL(req.url ?? "/", "http://localhost")
      : undefined;
    if (!url) {
      return sendJson(res, 400, {
        error: { code: "INVALID_PAYLOAD", message: "The request target is not a valid URL" },
      });
    }
    try {
      if (deps.browserCors && BROWSER_PATHS.has(url.pathname)) {
        if (!(await applyCors(deps.browserCors, req, res))) return;
      }
      if (req.method === "GET" && url.pathname === "/healthz") {
        return sendJson(res, 200, { status: "ok" });
      }
      if (req.method === "GET" && url.pathname === "/readyz") {
        if (deps.isDraining()) return sendJson(res, 503, { status: "draining" });
        const ready = await databaseReady(deps.sql);
        return sendJson(res, ready ? 200 : 503, {
          status: ready ? "ready" : "unavailable",
          database: ready ? "up" : "down",
        });
      }
      if (req.method === "GET" && url.pathname === "/metrics") {
        const text = await deps.metrics.registry.metrics();
        res.writeHead(200, { "content-type": deps.metrics.registry.contentType });
        res.end(text);
        return;
      }
      if (deps.mintDevToken && req.method === "POST" && url.pathname === "/dev/token") {
        const body = (await readJson(req)) as { userId?: unknown } | undefined;
        const userId = body?.userId;
        if (typeof userId !== "string" || !DEV_USER_ID.test(userId)) {
          return sendJson(res, 400, {
            error: { code: "INVALID_PAYLOAD", message: "userId: 1-64 letters, digits, _ or -" },
          });
        }
        const token = await deps.mintDevToken(userId, devTokenParty(req, deps));
        return sendJson(res, 200, { token });
      }
      for (const route of deps.routes ?? []) {
        if (await route(req, res, url)) return;
      }
      sendJson(res, 404, { error: { code: "NOT_FOUND", message: "Not found" } });
    } catch (err) {
      deps.logger.error({ err, path: url.pathname }, "http request failed");
      if (!res.headersSent)
        sendJson(res, 500, { error: { code: "INTERNAL", message: "Internal error" } });
    }
  };
}

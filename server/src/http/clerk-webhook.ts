/**
 * `POST /webhooks/clerk`: Clerk's webhooks (delivered by Svix), verified with @clerk/backend's
 * `verifyWebhook` (Standard Webhooks: HMAC-SHA256 over `id.timestamp.body` with the signing
 * secret, timestamps older or newer than 5 minutes refused). Without
 * CLERK_WEBHOOK_SIGNING_SECRET the route does not exist (404).
 *
 * Answers: 200 when handled or deliberately ignored (so Svix stops retrying), 400 for missing
 * headers, a body that is not JSON or a malformed event, 401 for a bad signature or a stale timestamp (a replay), 413
 * for an oversized body, 408 for a body that does not arrive within HTTP_BODY_TIMEOUT_MS, 503 when the database is unavailable (Svix retries later).
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { verifyWebhook } from "@clerk/backend/webhooks";
import { z } from "zod";
import { ErrorCode } from "../../../protocol/index.js";
import type { Logger } from "../logger.js";
import { isStorableText } from "../protocol-schemas.js";
import type { ClerkEvent, ClerkWebhookService } from "../services/clerk-webhook.service.js";
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

export const WEBHOOK_PATH = "/webhooks/clerk";
/** Clerk's user objects are a few kilobytes; this leaves ample room. */
export const WEBHOOK_MAX_BODY_BYTES = 256 * 1024;

const SVIX_HEADERS = ["svix-id", "svix-timestamp", "svix-signature"] as const;

export interface ClerkWebhookDeps {
  signingSecret: string;
  service: ClerkWebhookService;
  logger: Logger;
  inflight: Inflight;
  /** Milliseconds the body may take to arrive (408 past it); default DEFAULT_BODY_TIMEOUT_MS. */
  bodyTimeoutMs?: number | undefined;
}

/** Text Postgres can store: no NUL, no lone surrogate (a 500 from the database otherwise). */
const storable = z.string().refine(isStorableText, "must be storable text");
/** A Clerk user id, as stored in the indexed `users.clerk_id` (a btree entry must stay small). */
const clerkUserId = z.string().min(1).max(191).pipe(storable);

// Only the fields this server uses; Clerk's objects carry many more (ignored).
const userData = z.looseObject({
  id: clerkUserId,
  primary_email_address_id: z.string().nullish(),
  email_addresses: z.array(z.looseObject({ id: z.string(), email_address: storable })).nullish(),
  image_url: storable.nullish(),
});
const deletedData = z.looseObject({ id: clerkUserId });
/**
 * Clerk's event timestamp (epoch ms, the envelope's `timestamp`): orders a user's events, which
 * Svix delivers at least once and in no particular order. Bounded to what a Date can hold.
 */
const eventTimestamp = z.number().int().min(0).max(8_640_000_000_000_000).optional();
const sessionData = z.looseObject({ id: z.string().min(1), user_id: z.string().nullish() });

const notAnObject = {
  code: ErrorCode.INVALID_PAYLOAD,
  message: "The body is not a JSON object",
} as const;

function isObject(value: unknown): boolean {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * The event this server acts on, or undefined for a type it ignores. Throws on malformed data.
 * An event without Clerk's `timestamp` (Clerk always sends one) is ordered by its arrival.
 */
function toClerkEvent(type: string, data: unknown, timestamp: unknown): ClerkEvent | undefined {
  const eventAt = () => eventTimestamp.parse(timestamp) ?? Date.now();
  switch (type) {
    case "user.created":
    case "user.updated": {
      const u = userData.parse(data);
      const primary = u.email_addresses?.find((e) => e.id === u.primary_email_address_id);
      return {
        type,
        userId: u.id,
        email: primary?.email_address ?? null,
        avatarUrl: u.image_url || null,
        eventAt: eventAt(),
      };
    }
    case "user.deleted":
      return { type, userId: deletedData.parse(data).id, eventAt: eventAt() };
    case "session.revoked":
    case "session.ended":
    case "session.removed": {
      const s = sessionData.parse(data);
      return { type, sessionId: s.id, userId: s.user_id ?? null };
    }
    default:
      return undefined;
  }
}

export function createClerkWebhookRoute(deps: ClerkWebhookDeps): HttpRoute {
  return async (req: IncomingMessage, res: ServerResponse, url: URL) => {
    if (url.pathname !== WEBHOOK_PATH) return false;
    const context = { path: url.pathname, svixId: req.headers["svix-id"] };
    try {
      if (req.method !== "POST") {
        sendError(res, { code: ErrorCode.NOT_FOUND, message: "No such route" });
        return true;
      }
      const missing = SVIX_HEADERS.filter((h) => !req.headers[h]);
      if (missing.length > 0) {
        res.setHeader("connection", "close");
        sendError(res, {
          code: ErrorCode.INVALID_PAYLOAD,
          message: `Missing webhook headers: ${missing.join(", ")}`,
        });
        return true;
      }
      if (deps.inflight.draining) {
        sendError(res, { code: ErrorCode.UNAVAILABLE, message: "Shutting down; retry" });
        return true;
      }
      const read = await readBody(req, res, WEBHOOK_MAX_BODY_BYTES, deps.bodyTimeoutMs);
      if (!read.ok) {
        sendBodyFailure(res, read, WEBHOOK_MAX_BODY_BYTES, deps.bodyTimeoutMs);
        return true;
      }

      // Every Clerk event is a JSON object. Anything else (a blank body, which parseJson reads as
      // {}, or `null`, on which verifyWebhook fails as if the signature were wrong) is a 400.
      const body = parseJson(read.text);
      if (!body.ok || read.text.trim() === "" || !isObject(body.value)) {
        sendError(res, body.ok ? notAnObject : invalidJson);
        return true;
      }

      // verifyWebhook takes a Fetch Request: hand it the exact bytes that were signed.
      const headers = new Headers();
      for (const h of SVIX_HEADERS) headers.set(h, String(req.headers[h]));
      let event: Awaited<ReturnType<typeof verifyWebhook>>;
      try {
        event = await verifyWebhook(
          new Request(`http://localhost${WEBHOOK_PATH}`, {
            method: "POST",
            headers,
            body: read.text,
          }),
          { signingSecret: deps.signingSecret },
        );
      } catch (err) {
        deps.logger.warn({ ...context, err: String(err) }, "clerk webhook refused");
        sendError(res, {
          code: ErrorCode.UNAUTHORIZED,
          message: "The webhook signature is invalid or its timestamp is too old",
        });
        return true;
      }

      let clerkEvent: ClerkEvent | undefined;
      try {
        clerkEvent = toClerkEvent(event.type, event.data, event.timestamp);
      } catch (err) {
        deps.logger.warn({ ...context, type: event.type, err: String(err) }, "malformed event");
        sendError(res, {
          code: ErrorCode.INVALID_PAYLOAD,
          message: `The ${event.type} event is missing fields this server needs`,
        });
        return true;
      }
      if (!clerkEvent) {
        sendJson(res, 200, { received: true, handled: false });
        return true;
      }
      await deps.inflight.track(deps.service.handle(clerkEvent));
      sendJson(res, 200, { received: true, handled: true });
    } catch (err) {
      sendFailure(res, err, context, deps.logger);
    }
    return true;
  };
}

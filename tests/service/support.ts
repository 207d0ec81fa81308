/**
 * Helpers for the service-API and webhook tests: a small JSON HTTP client, Clerk-style
 * (Svix / Standard Webhooks) signing done locally with the same scheme Clerk uses, and Clerk
 * event payloads.
 */
import { createHmac, randomBytes } from "node:crypto";
import { expect } from "vitest";
import type { ClientSocket } from "../helpers/server.js";
import { ok } from "../realtime/support.js";

/** A service key as an operator would generate it (`openssl rand -hex 32`). */
export function newServiceKey(): string {
  return randomBytes(32).toString("hex");
}

/** A signing secret shaped like Clerk's: `whsec_` + base64 of random bytes. */
export function newSigningSecret(): string {
  return `whsec_${randomBytes(24).toString("base64")}`;
}

export interface HttpResult<T = unknown> {
  status: number;
  headers: Headers;
  body: T;
}

/** Bounded: a request that hangs fails the test instead of stalling it. */
const REQUEST_TIMEOUT_MS = 15_000;

export async function http<T = unknown>(
  url: string,
  init: { method?: string; headers?: Record<string, string>; body?: string } = {},
): Promise<HttpResult<T>> {
  const res = await fetch(url, {
    method: init.method ?? "GET",
    headers: init.headers ?? {},
    ...(init.body !== undefined ? { body: init.body } : {}),
    signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
  });
  const text = await res.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON: kept as text
  }
  return { status: res.status, headers: res.headers, body: body as T };
}

/** The service API of one server, authenticated with `key`. */
export function serviceClient(baseUrl: string, key: string) {
  const call = <T = unknown>(
    method: "GET" | "POST",
    path: string,
    body?: unknown,
    headers: Record<string, string> = {},
  ) =>
    http<T>(`${baseUrl}/service/v1${path}`, {
      method,
      headers: {
        authorization: `Bearer ${key}`,
        ...(body !== undefined ? { "content-type": "application/json" } : {}),
        ...headers,
      },
      ...(body !== undefined
        ? { body: typeof body === "string" ? body : JSON.stringify(body) }
        : {}),
    });
  return {
    get: <T = unknown>(path: string) => call<T>("GET", path),
    post: <T = unknown>(path: string, body: unknown = {}) => call<T>("POST", path, body),
    call,
  };
}

/** The error body every failure carries; checks its shape and returns it. */
export function errorOf(result: HttpResult): {
  code: string;
  message: string;
  details?: { path: string; message: string }[];
} {
  const body = result.body as { error?: { code: string; message: string } };
  expect(body.error, JSON.stringify(result.body)).toBeDefined();
  expect(Object.keys(body)).toEqual(["error"]);
  expect(typeof body.error?.code).toBe("string");
  expect(body.error?.message.length).toBeGreaterThan(0);
  // Nothing internal leaks.
  expect(JSON.stringify(body)).not.toMatch(
    /\bat \S+ \(|\bselect |\binsert |\.ts:\d|stack|postgres/i,
  );
  return body.error as ReturnType<typeof errorOf>;
}

/** Signs like Svix does for Clerk: v1,base64(HMAC-SHA256(key, `${id}.${timestamp}.${body}`)). */
export function svixSignature(secret: string, id: string, timestamp: number, body: string): string {
  const key = Buffer.from(secret.replace(/^whsec_/, ""), "base64");
  const mac = createHmac("sha256", key).update(`${id}.${timestamp}.${body}`).digest("base64");
  return `v1,${mac}`;
}

export interface Delivery {
  id: string;
  timestamp: number;
  body: string;
  headers: Record<string, string>;
}

/** A signed delivery of `event` (override id, timestamp or secret to forge bad ones). */
export function signedDelivery(
  secret: string,
  event: unknown,
  options: { id?: string; timestamp?: number } = {},
): Delivery {
  const id = options.id ?? `msg_${randomBytes(12).toString("hex")}`;
  const timestamp = options.timestamp ?? Math.floor(Date.now() / 1000);
  const body = JSON.stringify(event);
  return {
    id,
    timestamp,
    body,
    headers: {
      "content-type": "application/json",
      "svix-id": id,
      "svix-timestamp": String(timestamp),
      "svix-signature": svixSignature(secret, id, timestamp, body),
    },
  };
}

export function deliver(baseUrl: string, delivery: Pick<Delivery, "headers" | "body">) {
  return http<{ received?: boolean; handled?: boolean }>(`${baseUrl}/webhooks/clerk`, {
    method: "POST",
    headers: delivery.headers,
    body: delivery.body,
  });
}

/** A Clerk event envelope as Clerk sends it. */
export function clerkEvent(type: string, data: Record<string, unknown>) {
  return {
    data,
    object: "event",
    type,
    timestamp: Date.now(),
    instance_id: "ins_test",
    event_attributes: { http_request: { client_ip: "127.0.0.1", user_agent: "vitest" } },
  };
}

/** A Clerk user object with the fields this server reads (and a few it ignores). */
export function clerkUser(id: string, email: string, imageUrl: string) {
  const emailId = `idn_${randomBytes(6).toString("hex")}`;
  return {
    id,
    object: "user",
    first_name: "Test",
    last_name: "User",
    image_url: imageUrl,
    has_image: true,
    primary_email_address_id: emailId,
    email_addresses: [
      { id: `idn_other`, object: "email_address", email_address: `other-${email}` },
      { id: emailId, object: "email_address", email_address: email },
    ],
    created_at: Date.now(),
    updated_at: Date.now(),
  };
}

/**
 * The text a device shows from a stream's deltas, placed by offset as docs/protocol.md says
 * (the server coalesces chunks, and deltas through different nodes may arrive out of order).
 * Also checks they tile the text exactly: no overlap, no hole, first indexes increasing.
 */
export function streamedText(
  deltas: readonly { offset: number; index: number; delta: string }[],
  from = "",
): string {
  const sorted = [...deltas].sort((a, b) => a.offset - b.offset);
  let text = from;
  let lastIndex = -1;
  for (const d of sorted) {
    expect(d.offset, `delta at ${d.offset} after ${text.length} characters`).toBe(text.length);
    expect(d.index).toBeGreaterThan(lastIndex);
    lastIndex = d.index;
    text += d.delta;
  }
  return text;
}

/** Creates a chat as `s` and opens it on every socket in `viewers`. */
export async function chatOpenOn(s: ClientSocket, viewers: ClientSocket[], title = "Service") {
  const { chat } = await ok(s, "chat:create", { title });
  for (const v of viewers) await ok(v, "chat:open", { chatId: chat.id });
  return chat.id;
}

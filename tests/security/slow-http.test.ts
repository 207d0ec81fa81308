/**
 * Slow HTTP clients, against a real server over raw TCP: a client that sends its headers and
 * then stalls, or stalls in the headers, must not hold its connection (and, on the webhook, up
 * to 256 KiB of buffered body without authentication) for Node's 300 s `requestTimeout`. The
 * body of `/webhooks/clerk` and `/service/…` is answered 408 at HTTP_BODY_TIMEOUT_MS and the
 * connection closed; headers are cut at HTTP_HEADERS_TIMEOUT_MS.
 */
import { connect, type Socket } from "node:net";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { startTestServer, type TestServer } from "../helpers/server.js";
import { newServiceKey, newSigningSecret } from "../service/support.js";

const BODY_TIMEOUT_MS = 1500;
const HEADERS_TIMEOUT_MS = 1500;
/** Far below Node's defaults (60 s headers, 300 s request), far above the deadlines. */
const BOUND_MS = 12_000;

let server: TestServer;
const key = newServiceKey();

beforeAll(async () => {
  server = await startTestServer({
    serviceApiKey: key,
    webhookSigningSecret: newSigningSecret(),
    httpTimeouts: { bodyTimeoutMs: BODY_TIMEOUT_MS, headersTimeoutMs: HEADERS_TIMEOUT_MS },
  });
});
afterAll(async () => {
  await server?.close();
});

/**
 * Opens a TCP connection, writes `text` and then nothing more. Resolves with what the server
 * sent and how long until it closed the connection, or "held" if it had not after BOUND_MS.
 */
function stall(text: string): Promise<{ answer: string; closedAfterMs: number } | "held"> {
  return new Promise((resolve) => {
    const started = Date.now();
    const socket: Socket = connect(server.port, "127.0.0.1", () => socket.write(text));
    let answer = "";
    socket.setEncoding("utf8");
    socket.on("data", (chunk) => {
      answer += chunk;
    });
    socket.on("error", () => {});
    const timer = setTimeout(() => {
      socket.destroy();
      resolve("held");
    }, BOUND_MS);
    socket.on("close", () => {
      clearTimeout(timer);
      resolve({ answer, closedAfterMs: Date.now() - started });
    });
  });
}

/** Request headers announcing a body of `length` bytes, then `sent` bytes of it. */
function stalledPost(path: string, headers: Record<string, string>, length: number, sent: string) {
  const lines = Object.entries({
    host: `127.0.0.1:${server.port}`,
    "content-type": "application/json",
    "content-length": String(length),
    ...headers,
  }).map(([k, v]) => `${k}: ${v}`);
  return `POST ${path} HTTP/1.1\r\n${lines.join("\r\n")}\r\n\r\n${sent}`;
}

const svix = {
  "svix-id": "msg_stall",
  "svix-timestamp": String(Math.floor(Date.now() / 1000)),
  "svix-signature": "v1,AAAA",
};

describe("slow HTTP clients are cut off", () => {
  test("a webhook body that stalls is answered 408 and its connection closed; so are many at once", async () => {
    const results = await Promise.all(
      Array.from({ length: 20 }, () =>
        stall(stalledPost("/webhooks/clerk", svix, 200_000, `{"type":"user.created","data":`)),
      ),
    );
    for (const r of results) {
      expect(r).not.toBe("held");
      if (r === "held") continue;
      expect(r.answer).toMatch(/^HTTP\/1\.1 408 /);
      expect(r.answer).toMatch(/did not arrive within 1.5 s/);
      expect(r.answer).not.toMatch(/stack|\.ts:\d/);
      expect(r.closedAfterMs).toBeGreaterThanOrEqual(BODY_TIMEOUT_MS - 100);
    }
    console.log(
      `[slow-http] 20 stalled webhook bodies: answered 408 and closed after ${Math.max(
        ...results.map((r) => (r === "held" ? BOUND_MS : r.closedAfterMs)),
      )} ms at most`,
    );
  });

  test("a service API body that stalls is answered 408 and its connection closed", async () => {
    const r = await stall(
      stalledPost(
        "/service/v1/users/user_stall/token-usage",
        { authorization: `Bearer ${key}` },
        1000,
        `{"tokens":`,
      ),
    );
    expect(r).not.toBe("held");
    if (r !== "held") expect(r.answer).toMatch(/^HTTP\/1\.1 408 /);
  });

  test("headers that stall are cut off at the headers timeout", async () => {
    const r = await stall(`POST /webhooks/clerk HTTP/1.1\r\nhost: 127.0.0.1\r\nsvix-id: x\r\n`);
    expect(r).not.toBe("held");
    if (r !== "held") {
      expect(r.closedAfterMs).toBeGreaterThanOrEqual(HEADERS_TIMEOUT_MS - 100);
      // Node answers a headers timeout with 408 before it closes.
      expect(r.answer).toMatch(/^(HTTP\/1\.1 408 |$)/);
    }
  });

  test("a body that arrives in time, in pieces, is served as before", async () => {
    const body = JSON.stringify({ tokens: 5 });
    const head = stalledPost(
      "/service/v1/users/user_nobody/token-usage",
      { authorization: `Bearer ${key}`, connection: "close" },
      body.length,
      body.slice(0, 3),
    );
    const answer = await new Promise<string>((resolve) => {
      const socket = connect(server.port, "127.0.0.1", () => {
        socket.write(head);
        setImmediate(() => socket.write(body.slice(3)));
      });
      let text = "";
      socket.setEncoding("utf8");
      socket.on("data", (c) => {
        text += c;
      });
      socket.on("close", () => resolve(text));
    });
    // The user has no row: a 404 from the service, not a timeout.
    expect(answer).toMatch(/^HTTP\/1\.1 404 /);
  });
});

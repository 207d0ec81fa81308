/**
 * A real webhook receiver for the outbox tests: an HTTP server on 127.0.0.1:0 that verifies
 * every request with `standardwebhooks` (as the app's backend would), records what arrived, and
 * answers as the test says (2xx, an error status, a redirect, garbage, or never).
 */
import { randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import {
  type AddressInfo,
  createConnection,
  createServer as createNetServer,
  type Server,
  type Socket,
} from "node:net";
import { Webhook } from "standardwebhooks";

/** A fresh Standard Webhooks secret. */
export const newSecret = () => `whsec_${randomBytes(24).toString("base64")}`;

export interface Delivery {
  id: string;
  type: string;
  timestamp: string;
  data: Record<string, unknown>;
  /** Attempt number of this event id at this receiver (1 for the first). */
  attempt: number;
  at: number;
  headers: IncomingMessage["headers"];
}

/** What to answer: a status, or one of the misbehaviours. */
export type Answer = number | "hang" | "redirect" | "garbage" | "reset";

export interface Receiver {
  url: string;
  /** Verified deliveries answered 2xx, in arrival order. */
  delivered: Delivery[];
  /** Every verified request, whatever it was answered. */
  attempts: Delivery[];
  /** Requests whose signature did not verify (must stay 0). */
  badSignatures: number;
  /** The most requests for one event id in progress at once (must stay 1). */
  maxConcurrentPerId: number;
  /** The most requests for one chat in progress at once (1: a chat is delivered in order). */
  maxConcurrentPerChat: number;
  /** Decides each answer; default 204. */
  answer: (d: Delivery) => Answer | Promise<Answer>;
  /** Deliveries of one type (2xx answered). */
  ofType(type: string): Delivery[];
  close(): Promise<void>;
}

export async function startReceiver(secret: string): Promise<Receiver> {
  const verifier = new Webhook(secret);
  const attemptsById = new Map<string, number>();
  const inProgress = new Map<string, number>();
  const hanging = new Set<ServerResponse>();
  const receiver: Receiver = {
    url: "",
    delivered: [],
    attempts: [],
    badSignatures: 0,
    maxConcurrentPerId: 0,
    maxConcurrentPerChat: 0,
    answer: () => 204,
    ofType: (type) => receiver.delivered.filter((d) => d.type === type),
    close: async () => {
      for (const res of hanging) res.destroy();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
  const server = createServer(async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const raw = Buffer.concat(chunks).toString("utf8");
    let body: { type: string; timestamp: string; data: Record<string, unknown> };
    try {
      body = verifier.verify(raw, req.headers as Record<string, string>) as typeof body;
    } catch {
      receiver.badSignatures++;
      res.writeHead(400).end("bad signature");
      return;
    }
    const id = String(req.headers["webhook-id"]);
    const attempt = (attemptsById.get(id) ?? 0) + 1;
    attemptsById.set(id, attempt);
    const now = (inProgress.get(id) ?? 0) + 1;
    inProgress.set(id, now);
    receiver.maxConcurrentPerId = Math.max(receiver.maxConcurrentPerId, now);
    const delivery: Delivery = { id, ...body, attempt, at: Date.now(), headers: req.headers };
    receiver.attempts.push(delivery);
    const chatKey = `chat:${String(body.data?.chatId)}`;
    const chatNow = (inProgress.get(chatKey) ?? 0) + 1;
    inProgress.set(chatKey, chatNow);
    receiver.maxConcurrentPerChat = Math.max(receiver.maxConcurrentPerChat, chatNow);
    let done = () => {
      inProgress.set(id, (inProgress.get(id) ?? 1) - 1);
      inProgress.set(chatKey, (inProgress.get(chatKey) ?? 1) - 1);
    };
    try {
      const answer = await receiver.answer(delivery);
      if (answer === "hang") {
        // In progress until the sender gives up (or dies) and the connection closes.
        hanging.add(res);
        const finish = done;
        res.on("close", () => {
          hanging.delete(res);
          finish();
        });
        done = () => {};
        return;
      }
      if (answer === "redirect") {
        res.writeHead(307, { location: `${receiver.url}/elsewhere` }).end();
      } else if (answer === "garbage") {
        // Not HTTP at all.
        res.socket?.end("\x00\x01garbage, not HTTP\r\n\r\n");
      } else if (answer === "reset") {
        res.socket?.destroy();
      } else {
        if (answer >= 200 && answer < 300) receiver.delivered.push(delivery);
        res.writeHead(answer, { "content-type": "text/plain" }).end(`answer ${answer}`);
      }
    } finally {
      done();
    }
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  receiver.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hooks`;
  return receiver;
}

/** Waits for `ms`: only to make a receiver slow, never to wait for a condition. */
export const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * A TCP proxy in front of Postgres: `cut()` drops every connection and refuses new ones,
 * `restore()` accepts again. The node under test reaches its database only through it.
 */
export class PgProxy {
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();
  private open = true;
  port = 0;

  constructor(
    private readonly host: string,
    private readonly targetPort: number,
  ) {
    this.server = createNetServer((client) => {
      if (!this.open) return client.destroy();
      const upstream = createConnection(this.targetPort, this.host);
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on("close", () => this.sockets.delete(s));
        s.on("error", () => {});
      }
      client.pipe(upstream).pipe(client);
      client.on("close", () => upstream.destroy());
      upstream.on("close", () => client.destroy());
    });
  }

  async listen(): Promise<void> {
    await new Promise<void>((r) => this.server.listen(0, "127.0.0.1", r));
    this.port = (this.server.address() as AddressInfo).port;
  }

  /** The database URL `url`, through this proxy. */
  via(url: string): string {
    const u = new URL(url);
    u.hostname = "127.0.0.1";
    u.port = String(this.port);
    return u.toString();
  }

  cut(): void {
    this.open = false;
    for (const s of this.sockets) s.destroy();
  }

  restore(): void {
    this.open = true;
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

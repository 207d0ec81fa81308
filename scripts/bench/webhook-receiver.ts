/**
 * The app's backend for `npm run bench:webhooks`, in a process of its own (as a real backend
 * is): verifies every webhook with `standardwebhooks` and reports, in batches over IPC, when each
 * message's event first arrived (epoch milliseconds, the bench's clock). Told over IPC to answer
 * 503 for a while (the receiver outage). Reads WEBHOOK_SECRET. Loopback only.
 */
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { Webhook } from "standardwebhooks";
import { nowMs } from "../loadtest/stats.js";

const verifier = new Webhook(process.env.WEBHOOK_SECRET ?? "");
const seen = new Set<string>();
let batch: [string, number][] = [];
let bad = 0;
let requests = 0;
let failing = false;

const server = createServer((req, res) => {
  const chunks: Buffer[] = [];
  req.on("data", (c: Buffer) => chunks.push(c));
  req.on("end", () => {
    const at = nowMs();
    requests++;
    if (failing) {
      res.writeHead(503).end("down for the benchmark");
      return;
    }
    try {
      const body = verifier.verify(
        Buffer.concat(chunks).toString("utf8"),
        req.headers as Record<string, string>,
      ) as { data: { message?: { clientId?: string } } };
      const clientId = body.data.message?.clientId;
      if (clientId && !seen.has(clientId)) {
        seen.add(clientId);
        batch.push([clientId, at]);
      }
      res.writeHead(204).end();
    } catch {
      bad++;
      res.writeHead(400).end();
    }
  });
});
server.keepAliveTimeout = 60_000;

setInterval(() => {
  if (batch.length === 0) return;
  process.send?.({ arrivals: batch, bad, requests });
  batch = [];
}, 10).unref();

process.on("message", (m: { failing?: boolean; stats?: boolean }) => {
  if (typeof m.failing === "boolean") failing = m.failing;
  if (m.stats) process.send?.({ arrivals: batch.splice(0), bad, requests });
});
process.on("disconnect", () => process.exit(0));

server.listen(0, "127.0.0.1", () => {
  process.send?.({ port: (server.address() as AddressInfo).port });
});

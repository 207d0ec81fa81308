/**
 * One server node for `npm run bench:stream` (scripts/bench/stream-fanout.ts), run as its own
 * process so that its CPU time is the server's alone. The real application (createApplication)
 * on the database in BENCH_DATABASE_URL, with the in-memory adapter, locally signed tokens and
 * the service API; STREAM_FLUSH_MS sets the delta coalescing. Talks to its parent over IPC:
 * `ready` (port, token, service key), `cpu` on request, `stopRequested` when AppEvents is told.
 */
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { createApplication } from "../../server/src/app.js";
import { mintSessionToken } from "../../server/src/auth/dev-keys.js";
import { createClerkVerifier } from "../../server/src/auth/token-verifier.js";
import { createDatabase } from "../../server/src/db/client.js";
import { createLogger } from "../../server/src/logger.js";
import { RateLimits } from "../../server/src/services/rate-limits.js";

const PARTY = "http://localhost:3000";
const send = (message: unknown) => process.send?.(message);

async function main() {
  const url = process.env.BENCH_DATABASE_URL;
  if (!url) throw new Error("BENCH_DATABASE_URL is required");
  const { privateKey, publicKey } = generateKeyPairSync("rsa", {
    modulusLength: 2048,
    publicKeyEncoding: { type: "spki", format: "pem" },
    privateKeyEncoding: { type: "pkcs8", format: "pem" },
  });
  const serviceKey = randomBytes(32).toString("hex");
  const database = createDatabase(url, { max: 10 });
  const rateLimits = new RateLimits({
    messagesPerWindow: 100_000,
    messageWindowSeconds: 10,
    connectionsPerMinute: 10_000,
    maxSocketsPerUser: 1000,
    connectionsPerAddressPerMinute: 1_000_000,
    commandsPerSecond: 1_000_000,
    commandBurst: 1_000_000,
    chatCreatesPerMinute: 1_000_000,
    chatEditsPerMinute: 1_000_000,
  });
  const httpServer = createServer();
  const app = createApplication(httpServer, {
    database,
    verifier: createClerkVerifier({ jwtKey: publicKey, authorizedParties: [PARTY] }),
    logger: createLogger("silent"),
    tokenGraceSeconds: 15,
    rateLimits,
    origins: { allowed: [], loopback: true },
    serviceApiKey: serviceKey,
    streamFlushMs: Number(process.env.STREAM_FLUSH_MS ?? 40),
    appEvents: {
      async stopRequested(event) {
        send({ type: "stopRequested", streamId: event.streamId, at: Date.now() });
      },
    },
  });
  await new Promise<void>((resolve) => httpServer.listen(0, "127.0.0.1", resolve));
  const userId = `bench_${randomBytes(4).toString("hex")}`;
  const token = await mintSessionToken(privateKey, userId, {
    authorizedParty: PARTY,
    ttlSeconds: 3600,
  });
  process.on("message", async (m: { type: string }) => {
    if (m.type === "cpu") send({ type: "cpu", usage: process.cpuUsage() });
    if (m.type === "close") {
      await app.close({ drainMs: 500 });
      await database.close();
      process.exit(0);
    }
  });
  send({
    type: "ready",
    port: (httpServer.address() as AddressInfo).port,
    token,
    userId,
    serviceKey,
  });
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});

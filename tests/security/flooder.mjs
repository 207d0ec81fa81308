/**
 * Command flooders for tests/security/floods.test.ts, in a worker thread: hostile clients run
 * elsewhere, so their own work (encoding, masking frames) must not share the server's event
 * loop, or the test would measure the flooders instead of the server. Plain JavaScript, so the
 * worker needs no TypeScript loader.
 *
 * workerData: { url, tokens: string[][] (per flooder, one per round), emits }. Each flooder
 * connects, blasts `emits` events (commands with an ack, unknown events with an ack, events
 * without an ack), waits (bounded) for the server's `connection:closing`, and goes again with
 * the next token. Posts { kicked: string[] }, the reason of every closing (or "timeout").
 */
import { parentPort, workerData } from "node:worker_threads";
import { io } from "socket.io-client";

const { url, tokens, emits } = workerData;

function within(promise, ms) {
  let timer;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise((resolve) => {
      timer = setTimeout(() => resolve("timeout"), ms);
    }),
  ]);
}

async function flooder(roundTokens) {
  const kicked = [];
  for (const token of roundTokens) {
    const s = io(url, {
      transports: ["websocket"],
      reconnection: false,
      forceNew: true,
      auth: { token },
    });
    await new Promise((resolve, reject) => {
      s.once("connect", resolve);
      s.once("connect_error", reject);
    });
    const closing = new Promise((resolve) => s.once("connection:closing", resolve));
    for (let i = 0; i < emits; i++) {
      if (i % 4 === 0) s.emit("chat:list", {}, () => {});
      else if (i % 4 === 1) s.emit("user:stats", {}, () => {});
      else if (i % 4 === 2) s.emit("no:such", {}, () => {});
      else s.emit("chat:list", {});
    }
    const event = await within(closing, 5000);
    kicked.push(event === "timeout" ? "timeout" : event.reason);
    s.disconnect();
  }
  return kicked;
}

const results = await Promise.all(tokens.map((roundTokens) => flooder(roundTokens)));
parentPort?.postMessage({ kicked: results.flat() });

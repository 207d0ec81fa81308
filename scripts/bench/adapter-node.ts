/**
 * One node of `npm run bench:adapter` (scripts/bench/adapter-fanout.ts): a Socket.IO server on
 * the product's Redis adapter (server/src/redis-adapter.ts, classic or sharded), whose sockets
 * join the room `user:<id>` of their handshake's `auth.user`. Driven over IPC by the bench:
 * `emit` broadcasts to rooms, `stats` reports the adapter messages its subscriber received and
 * its CPU time, `reset` zeroes both. Its CPU time is this process's alone.
 */
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { Server } from "socket.io";
import { createLogger } from "../../server/src/logger.js";
import { type AdapterKind, createRedisAdapter } from "../../server/src/redis-adapter.js";

const [redisUrl = "", kind = "classic", prefix = "bench"] = process.argv.slice(2);
const handle = createRedisAdapter(redisUrl, prefix, createLogger("silent"), () => {}, {
  kind: kind as AdapterKind,
});
const http = createServer();
const io = new Server(http, { adapter: handle.adapter, transports: ["websocket"] });
io.on("connection", (socket) => {
  const user = String(socket.handshake.auth.user ?? "");
  socket.join(`user:${user}`);
});

// Every message the adapter's subscriber connection receives, whatever its kind (classic:
// pattern and plain messages; sharded: sharded messages).
let inbound = 0;
for (const event of ["messageBuffer", "pmessageBuffer", "smessageBuffer"]) {
  handle.subscriber.on(event, () => {
    inbound += 1;
  });
}
let cpuStart = process.cpuUsage();

http.listen(0, "127.0.0.1", () => {
  const { port } = http.address() as AddressInfo;
  process.send?.({ type: "ready", port });
});

process.on("message", (msg: { type: string; rooms?: string[]; payload?: unknown }) => {
  if (msg.type === "emit") {
    for (const room of msg.rooms ?? []) io.to(room).emit("ev", msg.payload);
    process.send?.({ type: "emitted" });
  } else if (msg.type === "stats") {
    const cpu = process.cpuUsage(cpuStart);
    process.send?.({ type: "stats", inbound, cpuMs: (cpu.user + cpu.system) / 1000 });
  } else if (msg.type === "reset") {
    inbound = 0;
    cpuStart = process.cpuUsage();
    process.send?.({ type: "reset" });
  } else if (msg.type === "close") {
    io.close();
    void handle.close().then(() => process.exit(0));
  }
});

/**
 * The load generator's raw handshake client (scripts/loadtest/raw-client.ts) against a real
 * Socket.IO server on loopback: it connects to the main namespace with its auth payload, gets
 * the server's refusal code when the CONNECT is refused, answers Engine.IO's pings so that a
 * held connection stays open, and its close disconnects the socket on the server.
 */
import { createServer, type Server as HttpServer } from "node:http";
import type { AddressInfo } from "node:net";
import { Server } from "socket.io";
import { afterAll, beforeAll, expect, test } from "vitest";
import { openRaw, RawConnectError } from "../../scripts/loadtest/raw-client.js";

let http: HttpServer;
let io: Server;
let url: string;
/** The auth payloads of the sockets the server accepted, and the reasons they disconnected. */
const accepted: unknown[] = [];
const disconnects: string[] = [];

beforeAll(async () => {
  http = createServer();
  // Pings every 100 ms, a connection that does not answer within 100 ms more is closed.
  io = new Server(http, { pingInterval: 100, pingTimeout: 100, transports: ["websocket"] });
  io.use((socket, next) => {
    const { token } = socket.handshake.auth as { token?: string };
    if (token === "good") return next();
    const err = new Error("refused") as Error & { data?: unknown };
    err.data = { code: token ? "TOKEN_INVALID" : "TOKEN_MISSING" };
    next(err);
  });
  io.on("connection", (socket) => {
    accepted.push(socket.handshake.auth);
    // Events the server emits after connecting are ignored by the client, not misread.
    socket.emit("hello", { big: "x".repeat(70_000) });
    socket.on("disconnect", (reason) => disconnects.push(reason));
  });
  await new Promise<void>((resolve) => http.listen(0, "127.0.0.1", resolve));
  url = `http://127.0.0.1:${(http.address() as AddressInfo).port}`;
});

afterAll(async () => {
  io.close();
  await new Promise((resolve) => http.close(resolve));
});

test("connects with its auth payload and stays connected across pings", async () => {
  const conn = await openRaw(url, { token: "good" });
  expect(accepted).toContainEqual({ token: "good" });
  // Several ping intervals: without its pongs the server would have closed it.
  await new Promise((r) => setTimeout(r, 600));
  expect(io.of("/").sockets.size).toBe(1);
  expect(disconnects).toEqual([]);
  conn.close();
  const deadline = Date.now() + 5000;
  while (disconnects.length === 0 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
  }
  // Socket.IO's DISCONNECT packet arrived before the transport closed.
  expect(disconnects).toEqual(["client namespace disconnect"]);
});

test("a refused CONNECT rejects with the server's code", async () => {
  await expect(openRaw(url, { token: "bad" })).rejects.toMatchObject({ code: "TOKEN_INVALID" });
  await expect(openRaw(url, {})).rejects.toMatchObject({ code: "TOKEN_MISSING" });
  await expect(openRaw(url, {})).rejects.toBeInstanceOf(RawConnectError);
});

test("a server that is not there, or not Socket.IO, fails the connection", async () => {
  const plain = createServer((_req, res) => res.writeHead(404).end());
  await new Promise<void>((resolve) => plain.listen(0, "127.0.0.1", resolve));
  const plainUrl = `http://127.0.0.1:${(plain.address() as AddressInfo).port}`;
  await expect(openRaw(plainUrl, { token: "good" })).rejects.toBeInstanceOf(RawConnectError);
  await new Promise((resolve) => plain.close(resolve));
  // Nothing listens there any more.
  await expect(openRaw(plainUrl, { token: "good" })).rejects.toBeInstanceOf(RawConnectError);
});

/**
 * The transport ceiling: a bare Socket.IO server with no auth and no database, doing the same
 * emit-with-ack and fan-out as the product (ack the sender, emit to the chat's room and the
 * user's room). Run as its own process by the load-test harness. PORT from the environment.
 */
import { createServer } from "node:http";
import { collectDefaultMetrics, Registry } from "prom-client";
import { Server } from "socket.io";

const registry = new Registry();
collectDefaultMetrics({ register: registry, prefix: "chat_" });

const httpServer = createServer(async (req, res) => {
  if (req.url === "/metrics") {
    res.writeHead(200, { "content-type": registry.contentType });
    res.end(await registry.metrics());
    return;
  }
  res.writeHead(req.url === "/readyz" ? 200 : 404);
  res.end();
});
const io = new Server(httpServer, { maxHttpBufferSize: 512 * 1024, serveClient: false });
const seqs = new Map<string, number>();

io.on("connection", (socket) => {
  const userId = String((socket.handshake.auth as { token?: string }).token ?? "anonymous");
  socket.join(`user:${userId}`);
  socket.on("chat:open", (payload: { chatId: string }, ack: (r: unknown) => void) => {
    socket.join(`session:${payload.chatId}`);
    ack({ ok: true, data: { messages: [], hasMore: false } });
  });
  socket.on(
    "message:send",
    (payload: { chatId: string; clientId: string; content: string }, ack: (r: unknown) => void) => {
      const seq = (seqs.get(payload.chatId) ?? 0) + 1;
      seqs.set(payload.chatId, seq);
      const message = { ...payload, seq, role: "user", createdAt: new Date().toISOString() };
      ack({ ok: true, data: { message, duplicate: false } });
      io.to(`session:${payload.chatId}`).emit("message:created", { message });
      io.to(`user:${userId}`).emit("chat:updated", {
        chat: {
          id: payload.chatId,
          lastSeq: seq,
          lastMessage: { role: "user", content: payload.content },
        },
      });
    },
  );
});

httpServer.listen(Number(process.env.PORT ?? 0), "127.0.0.1", () => {
  const address = httpServer.address();
  console.log(JSON.stringify({ port: typeof address === "object" && address ? address.port : 0 }));
});
process.on("SIGTERM", () => {
  io.close();
  process.exit(0);
});

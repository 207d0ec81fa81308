/**
 * The composition root of one server node: wires repositories, services, the Socket.IO
 * server and the HTTP routes onto an HTTP server. Only main.ts builds real dependencies;
 * tests pass in their own.
 */
import type { Server as HttpServer } from "node:http";
import { Server, type ServerOptions } from "socket.io";
import { ErrorCode, Limits } from "../../protocol/constants.js";
import type { TokenVerifier } from "./auth/token-verifier.js";
import type { DatabaseHandle } from "./db/client.js";
import { createHttpHandler } from "./http/routes.js";
import type { Logger } from "./logger.js";
import { ChatRepository } from "./repositories/chat.repository.js";
import { MessageRepository } from "./repositories/message.repository.js";
import { UserRepository } from "./repositories/user.repository.js";
import { ChatService } from "./services/chat.service.js";
import { AppError } from "./services/errors.js";
import { MessageService } from "./services/message.service.js";
import { UserService } from "./services/user.service.js";
import { authMiddleware } from "./socket/auth.middleware.js";
import { SocketBroadcaster } from "./socket/broadcaster.js";
import { answerUnknownCommands, type CommandContext } from "./socket/command.js";
import { registerChatHandlers } from "./socket/handlers/chat.handlers.js";
import { registerMessageHandlers } from "./socket/handlers/message.handlers.js";
import { registerUserHandlers } from "./socket/handlers/user.handlers.js";
import { TokenExpiry } from "./socket/token-expiry.js";
import { type ChatServer, rooms } from "./socket/types.js";

export interface AppComponents {
  database: DatabaseHandle;
  verifier: TokenVerifier;
  logger: Logger;
  /** Seconds a socket may outlive its token without refreshing. */
  tokenGraceSeconds: number;
  /** The Socket.IO adapter (Redis across nodes); default in-memory, one node. */
  adapter?: ServerOptions["adapter"] | undefined;
  /** Development only: mints tokens for `POST /dev/token`. */
  mintDevToken?: ((userId: string) => Promise<string>) | undefined;
}

export interface Application {
  io: ChatServer;
  services: { chats: ChatService; messages: MessageService; users: UserService };
  /** Closes Socket.IO (disconnecting every socket) and the HTTP server. The database is the caller's. */
  close(): Promise<void>;
}

export function createApplication(httpServer: HttpServer, components: AppComponents): Application {
  const { database, verifier, logger } = components;

  // Must be attached before Socket.IO, which forwards the requests it does not own to it.
  httpServer.on(
    "request",
    createHttpHandler({ sql: database.sql, logger, mintDevToken: components.mintDevToken }),
  );

  const io: ChatServer = new Server(httpServer, {
    // Deliberate: the largest message (64k characters) fits with room to spare, and no frame
    // can make the server buffer more than this per packet.
    maxHttpBufferSize: Limits.MAX_FRAME_BYTES,
    serveClient: false,
    ...(components.adapter ? { adapter: components.adapter } : {}),
  });

  const userRepo = new UserRepository(database.db);
  const users = new UserService(userRepo);
  const broadcaster = new SocketBroadcaster(io, (id) => users.stats(id), logger);
  const chats = new ChatService(
    new ChatRepository(database.db),
    new MessageRepository(database.db),
    broadcaster,
  );
  const messages = new MessageService(new MessageRepository(database.db), chats, broadcaster);
  const expiry = new TokenExpiry(components.tokenGraceSeconds * 1000);

  const ctx: CommandContext = {
    logger,
    guard(socket) {
      if (Date.now() >= socket.data.tokenExpiresAt) {
        throw new AppError(ErrorCode.TOKEN_EXPIRED, "The token expired; send auth:refresh first");
      }
    },
  };

  io.use(authMiddleware(verifier, users, logger));
  io.on("connection", (socket) => {
    const actor = { userId: socket.data.userId, dbUserId: socket.data.dbUserId };
    socket.join(rooms.user(actor.userId));
    if (socket.data.sessionId) socket.join(rooms.clerkSession(socket.data.sessionId));
    expiry.schedule(socket);
    socket.on("disconnect", () => expiry.clear(socket));

    answerUnknownCommands(socket);
    registerChatHandlers(socket, actor, chats, ctx);
    registerMessageHandlers(socket, actor, messages, ctx);
    registerUserHandlers(socket, actor, { users, verifier, expiry }, ctx);
  });

  return {
    io,
    services: { chats, messages, users },
    async close() {
      broadcaster.close();
      await io.close();
    },
  };
}

/**
 * The composition root of one server node: wires repositories, services, the Socket.IO
 * server and the HTTP routes onto an HTTP server. Only main.ts builds real dependencies;
 * tests pass in their own.
 */
import type { Server as HttpServer, IncomingMessage } from "node:http";
import cors from "cors";
import { Server, type ServerOptions } from "socket.io";
import { DisconnectReason, ErrorCode, Limits } from "../../protocol/constants.js";
import type { TokenVerifier } from "./auth/token-verifier.js";
import type { ClusterMonitor } from "./cluster-monitor.js";
import type { AppWebhookConfig } from "./config.js";
import type { DatabaseHandle } from "./db/client.js";
import { createClerkWebhookRoute } from "./http/clerk-webhook.js";
import { createHttpHandler, type HttpRoute } from "./http/routes.js";
import { createServiceApi } from "./http/service-api.js";
import type { Logger } from "./logger.js";
import { Metrics } from "./metrics.js";
import type { RedisClient } from "./redis/client.js";
import { AppEventRepository } from "./repositories/app-event.repository.js";
import { ChatRepository } from "./repositories/chat.repository.js";
import { MessageRepository } from "./repositories/message.repository.js";
import { SearchRepository } from "./repositories/search.repository.js";
import { MemoryStreamStore } from "./repositories/stream.memory.js";
import { RedisStreamStore } from "./repositories/stream.redis.js";
import type { StreamStore } from "./repositories/stream.repository.js";
import { UserRepository } from "./repositories/user.repository.js";
import { AppEventDelivery } from "./services/app-event-delivery.js";
import { AppEventDeliveryThread, outboxDatabase } from "./services/app-event-delivery-thread.js";
import { type AppEvents, noAppEvents, OutboxAppEvents } from "./services/app-events.js";
import { ChatService } from "./services/chat.service.js";
import { ClerkWebhookService } from "./services/clerk-webhook.service.js";
import { AppError } from "./services/errors.js";
import { MessageService } from "./services/message.service.js";
import type { RateLimits } from "./services/rate-limits.js";
import { createRevocations } from "./services/revocations.js";
import { ServiceRoleService } from "./services/service-role.service.js";
import { StreamService } from "./services/stream.service.js";
import { UserService } from "./services/user.service.js";
import { countAdapterTraffic } from "./socket/adapter-metrics.js";
import { admissionMiddleware, closeIdleRefused, judgeHandshake } from "./socket/admission.js";
import { authMiddleware, closeIfRevoked } from "./socket/auth.middleware.js";
import { SocketBroadcaster } from "./socket/broadcaster.js";
import { coalesceWrites } from "./socket/coalesce-writes.js";
import {
  type CommandContext,
  type CommandHandlers,
  serveCommands,
  userPageGates,
} from "./socket/command.js";
import { chatHandlers } from "./socket/handlers/chat.handlers.js";
import { messageHandlers } from "./socket/handlers/message.handlers.js";
import { userHandlers } from "./socket/handlers/user.handlers.js";
import { Inflight } from "./socket/inflight.js";
import { type OriginPolicy, originChecker } from "./socket/origins.js";
import { limitOutbound } from "./socket/outbound-limit.js";
import { TokenExpiry } from "./socket/token-expiry.js";
import { type ChatServer, rooms } from "./socket/types.js";

export interface AppComponents {
  database: DatabaseHandle;
  verifier: TokenVerifier;
  logger: Logger;
  /** Seconds a socket may outlive its token without refreshing. */
  tokenGraceSeconds: number;
  /**
   * Flood limits: per address, per user (connections; writes by subscription tier) and per
   * socket (commands).
   */
  rateLimits: RateLimits;
  /**
   * Browser origins allowed to connect; requests without an Origin header, and those whose
   * Origin is the server's own (its host equals the Host header), are always allowed.
   */
  origins: OriginPolicy;
  /**
   * Milliseconds a connection may take from its WebSocket handshake to a completed
   * authentication (Socket.IO `connectTimeout`) before it is closed; default 10 s.
   */
  connectTimeoutMs?: number | undefined;
  /**
   * Milliseconds a request body to the service API or the webhooks may take to arrive before
   * it is answered 408 and its connection closed; default 10 s (http/http-json.ts).
   */
  httpBodyTimeoutMs?: number | undefined;
  /** Reverse proxies whose X-Forwarded-For entries are trusted for the client address; default 0. */
  trustProxy?: number | undefined;
  /** Prometheus metrics; default a fresh registry. */
  metrics?: Metrics | undefined;
  /** Milliseconds before a command is answered UNAVAILABLE; default 5000. */
  commandTimeoutMs?: number | undefined;
  /**
   * Bytes that may wait to be written to one connection before it is disconnected as a slow
   * consumer (see socket/outbound-limit.ts); default DEFAULT_SOCKET_MAX_BUFFERED_BYTES.
   */
  socketMaxBufferedBytes?: number | undefined;
  /**
   * Write the packets a connection is sent in one tick in one system call
   * (socket/coalesce-writes.ts); default true.
   */
  coalesceWrites?: boolean | undefined;
  /** The Socket.IO adapter (Redis across nodes); default in-memory, one node. */
  adapter?: ServerOptions["adapter"] | undefined;
  /**
   * With the Redis adapter: says when events between nodes may have been lost, so that this
   * node's sockets are told to resynchronise (`connection:resync`). None with one node.
   */
  clusterMonitor?: Pick<ClusterMonitor, "onResync"> | undefined;
  /** Development only: mints tokens for `POST /dev/token`. */
  mintDevToken?: ((userId: string, authorizedParty: string) => Promise<string>) | undefined;
  /** Development only: the demo page at `/` (see http/demo.ts). */
  demo?: HttpRoute | undefined;
  /** Secret of the service-role HTTP API (`/service/v1/…`); the API is disabled without it. */
  serviceApiKey?: string | undefined;
  /** Clerk's webhook signing secret (`whsec_…`); `POST /webhooks/clerk` is disabled without it. */
  webhookSigningSecret?: string | undefined;
  /** Milliseconds a streamed reply may go without a chunk before it is marked failed; default 60 s. */
  streamTimeoutMs?: number | undefined;
  /** Milliseconds a stream's chunks are gathered into one `message:delta`; 0: none; default 40. */
  streamFlushMs?: number | undefined;
  /**
   * Redis for state shared by the nodes (streamed replies), with the key prefix. Without it the
   * state is in this node's memory, which is only right for a single node.
   */
  redis?: { client: RedisClient; keyPrefix: string } | undefined;
  /**
   * Webhooks to the app's backend (APP_WEBHOOK_*): events are enqueued and this node delivers
   * them (on connections of its own to `databaseUrl`). Without it no events are enqueued: the
   * node turns enqueueing off at start (docs/service-api.md, "Webhooks to your backend").
   */
  appWebhooks?:
    | {
        config: AppWebhookConfig;
        databaseUrl: string;
        /** On a worker thread of its own (APP_WEBHOOK_THREAD); default true. */
        thread?: boolean | undefined;
      }
    | undefined;
  /** Where the services raise events for the app's backend; default the outbox or, without appWebhooks, nothing. */
  appEvents?: AppEvents | undefined;
}

export interface Application {
  io: ChatServer;
  metrics: Metrics;
  services: {
    chats: ChatService;
    messages: MessageService;
    users: UserService;
    serviceRole: ServiceRoleService;
    streams: StreamService;
    /** Events for the app's backend (stored in the outbox when webhooks are configured). */
    appEvents: AppEvents;
  };
  /**
   * Resolves once background start-up is done (the webhook delivery runs and enqueueing is on or
   * off); rejects if it failed. main.ts waits for it before listening.
   */
  ready: Promise<void>;
  /** The outbox's delivery thread, when it runs on one (APP_WEBHOOK_THREAD; tests inspect it). */
  deliveryThread: AppEventDeliveryThread | undefined;
  /**
   * Graceful stop: stops accepting connections, refuses new commands (UNAVAILABLE), lets
   * commands in progress finish and ack (up to `drainMs`), tells every socket
   * `connection:closing` SERVER_SHUTDOWN, then disconnects them and closes Socket.IO and the
   * HTTP server. The database and Redis are the caller's to close afterwards.
   */
  close(options?: { drainMs?: number }): Promise<void>;
}

/** Default of `socketMaxBufferedBytes` (SOCKET_MAX_BUFFERED_BYTES): 8 MiB. */
export const DEFAULT_SOCKET_MAX_BUFFERED_BYTES = 8 * 1024 * 1024;

export function createApplication(httpServer: HttpServer, components: AppComponents): Application {
  const { database, verifier, logger, rateLimits } = components;
  const revocations = createRevocations(components.redis?.client, components.redis?.keyPrefix);
  const metrics = components.metrics ?? new Metrics();

  const inflight = new Inflight();
  const commandTimeoutMs = components.commandTimeoutMs ?? 5000;
  // Filled below, once the services exist; the HTTP handler reads it per request.
  const extraRoutes: HttpRoute[] = components.demo ? [components.demo] : [];

  const originAllowed = originChecker(components.origins);
  // The same origins for CORS (preflights and the answers of plain HTTP requests: the browser
  // routes below, and Engine.IO's). No credentials: clients authenticate with a token, never
  // with cookies.
  const corsMiddleware = cors({
    origin: (origin, callback) => callback(null, originAllowed(origin)),
    credentials: false,
  });

  // Must be attached before Socket.IO, which forwards the requests it does not own to it.
  httpServer.on(
    "request",
    createHttpHandler({
      sql: database.sql,
      logger,
      mintDevToken: components.mintDevToken,
      browserCors: corsMiddleware,
      originAllowed,
      isDraining: () => inflight.draining,
      metrics,
      routes: extraRoutes,
    }),
  );

  const admission = {
    rateLimits,
    originAllowed,
    trustProxy: components.trustProxy ?? 0,
    metrics,
    logger,
  };
  const io: ChatServer = new Server(httpServer, {
    // Deliberate: the largest message (64k characters) fits with room to spare, and no frame
    // can make the server buffer more than this per packet (a larger WebSocket frame is
    // refused from its header, before it is read, and closes that connection only).
    maxHttpBufferSize: Limits.MAX_FRAME_BYTES,
    serveClient: false,
    // WebSocket only: one HTTP request per connection, checked below, and any load balancing
    // works. Long-polling would need sticky sessions and cross-origin POSTs; every client here
    // (SDK, demo) uses WebSocket. With nothing to upgrade from, upgrades are off too.
    transports: ["websocket"],
    allowUpgrades: false,
    // Every connection starts with this handshake: a draining node takes no new connections;
    // every other one is counted against its address and its Origin checked, and the verdict
    // is given by the first middleware as a connect_error with a code (socket/admission.ts).
    allowRequest: (req, callback) => {
      if (inflight.draining) return callback("shutting down", false);
      judgeHandshake(req, admission).then(
        () => callback(null, true),
        (err: unknown) => {
          logger.error({ err }, "handshake admission failed");
          callback("Internal error", false);
        },
      );
    },
    // A connection that has not completed authentication by then is closed (Socket.IO's
    // default, 45 s, let idle unauthenticated WebSockets pile up).
    connectTimeout: components.connectTimeoutMs ?? 10_000,
    // Engine.IO's default, stated: compressing every small frame costs more CPU than the bytes
    // it saves on loopback and LAN links, and each socket would hold zlib state.
    perMessageDeflate: false,
    // No `cors` here: it is applied below, to plain HTTP requests only.
    ...(components.adapter ? { adapter: components.adapter } : {}),
  });
  countAdapterTraffic(io, metrics);
  if (components.coalesceWrites ?? true) io.engine.on("connection", coalesceWrites);
  // A connection refused at the handshake that never sends its CONNECT is closed after 2 s.
  closeIdleRefused(io);
  // CORS is not run on WebSocket upgrades: browsers apply no CORS to WebSockets (the Origin
  // check above is what guards them), and running the middleware on every handshake cost about
  // 10 µs of each for nothing.
  // allowRequest sees only requests that open a session. One that names an existing session
  // (`sid`) is how polling continues or upgrades; with WebSocket only no client sends one, so
  // it is refused rather than let past the checks above. Engine.IO has parsed the query into
  // `_query` before its middlewares run.
  io.engine.use(
    (
      req: IncomingMessage & { _query?: Record<string, string> },
      res: Parameters<typeof corsMiddleware>[1],
      next: (err?: unknown) => void,
    ) => {
      const query =
        req._query ?? Object.fromEntries(new URL(req.url ?? "/", "http://l").searchParams);
      if (query.sid !== undefined) {
        return next(new Error("Session ids are not accepted (WebSocket only)"));
      }
      if (req.headers.upgrade !== undefined) return next();
      corsMiddleware(req, res, next);
    },
  );

  const userRepo = new UserRepository(database.db);
  const users = new UserService(userRepo);
  const broadcaster = new SocketBroadcaster(io, (ids) => users.statsMany(ids), logger, metrics);
  const stopResyncs = components.clusterMonitor?.onResync((reason) =>
    broadcaster.resyncLocal(reason),
  );
  // Set once the outbox's delivery runs: a stored message wakes it on this node.
  let wakeDelivery: (() => void) | undefined;
  const messageRepo = new MessageRepository(database.sql, metrics, () => wakeDelivery?.());
  const streamStore: StreamStore = components.redis
    ? new RedisStreamStore(components.redis.client, components.redis.keyPrefix)
    : new MemoryStreamStore();
  const chats = new ChatService(
    new ChatRepository(database.db, database.sql),
    messageRepo,
    broadcaster,
    rateLimits,
    streamStore,
    logger,
  );
  const messages = new MessageService(messageRepo, chats, broadcaster, rateLimits);
  const expiry = new TokenExpiry(components.tokenGraceSeconds * 1000);

  const serviceRole = new ServiceRoleService(
    users,
    messages,
    chats,
    new SearchRepository(database.db),
    broadcaster,
  );
  // The outbox: failed-deliveries routes read it on the main pool; the delivery has its own.
  const appEventRepo = new AppEventRepository(database.sql);
  const appEvents =
    components.appEvents ??
    (components.appWebhooks
      ? new OutboxAppEvents(appEventRepo, () => wakeDelivery?.())
      : noAppEvents);
  let delivery: { stop(): Promise<void>; database?: DatabaseHandle } | undefined;
  let deliveryThread: AppEventDeliveryThread | undefined;
  let ready: Promise<void>;
  if (components.appWebhooks) {
    const { config, databaseUrl, thread = true } = components.appWebhooks;
    if (thread) {
      // Its own event loop (another core), pool and logger; metrics come back to this node's.
      const worker = new AppEventDeliveryThread({ databaseUrl, webhook: config, logger, metrics });
      deliveryThread = worker;
      delivery = { stop: () => worker.stop() };
      wakeDelivery = () => worker.wake();
      ready = worker.start();
    } else {
      const outboxDb = outboxDatabase(databaseUrl, config);
      const worker = new AppEventDelivery({
        repository: new AppEventRepository(outboxDb.sql),
        webhook: config,
        logger,
        metrics,
      });
      delivery = { stop: () => worker.stop(), database: outboxDb };
      wakeDelivery = () => worker.wake();
      ready = worker.start();
    }
  } else {
    ready = appEventRepo
      .setEnabled(false)
      .catch((err) => logger.warn({ err }, "webhooks: could not turn enqueueing off"));
  }
  ready.catch((err) => logger.error({ err }, "webhooks: start-up failed"));

  const streams = new StreamService(
    streamStore,
    users,
    chats,
    messages,
    broadcaster,
    logger,
    {
      timeoutMs: components.streamTimeoutMs ?? 60_000,
      finishLeaseMs: commandTimeoutMs * 2,
      flushMs: components.streamFlushMs,
    },
    appEvents,
  );
  streams.startSweeper();
  if (components.serviceApiKey) {
    extraRoutes.push(
      createServiceApi({
        apiKey: components.serviceApiKey,
        service: serviceRole,
        streams,
        webhooks: appEventRepo,
        logger,
        inflight,
        timeoutMs: commandTimeoutMs,
        bodyTimeoutMs: components.httpBodyTimeoutMs,
      }),
    );
  }
  if (components.webhookSigningSecret) {
    extraRoutes.push(
      createClerkWebhookRoute({
        signingSecret: components.webhookSigningSecret,
        service: new ClerkWebhookService(users, broadcaster, logger, revocations),
        logger,
        inflight,
        bodyTimeoutMs: components.httpBodyTimeoutMs,
      }),
    );
  }

  const ctx: CommandContext = {
    logger,
    inflight,
    metrics,
    timeoutMs: commandTimeoutMs,
    userPages: userPageGates(),
    guard(socket) {
      if (Date.now() >= socket.data.tokenExpiresAt) {
        throw new AppError(ErrorCode.TOKEN_EXPIRED, "The token expired; send auth:refresh first");
      }
    },
  };

  // First: the handshake's verdict (origin, address limit), before any token is verified.
  io.use(admissionMiddleware(admission));
  const handlers: CommandHandlers = {
    ...chatHandlers(chats),
    ...messageHandlers(messages, streams),
    ...userHandlers({ users, verifier, expiry, revocations }),
  };

  io.use(authMiddleware({ verifier, users, rateLimits, revocations, metrics, logger }));
  io.on("connection", (socket) => {
    metrics.socketsConnected.inc();
    socket.join(rooms.user(socket.data.userId));
    if (socket.data.sessionId) socket.join(rooms.clerkSession(socket.data.sessionId));
    expiry.schedule(socket);
    socket.on("disconnect", () => {
      expiry.clear(socket);
      rateLimits.release(socket.data.userId, socket.id);
      metrics.socketsConnected.dec();
    });

    serveCommands(socket, handlers, rateLimits.commandBucket(), ctx);
    // A deletion or revocation may have gone out between the handshake's check and the joins.
    void closeIfRevoked(socket, { revocations, users, logger });
    limitOutbound(socket, {
      maxBytes: components.socketMaxBufferedBytes ?? DEFAULT_SOCKET_MAX_BUFFERED_BYTES,
      logger,
      metrics,
    });
  });

  return {
    io,
    metrics,
    services: { chats, messages, users, serviceRole, streams, appEvents },
    ready,
    deliveryThread,
    async close({ drainMs = 5000 } = {}) {
      if (inflight.draining) return;
      // From here on: new handshakes are refused, /readyz says 503 so load balancers move
      // away, and new commands are refused as UNAVAILABLE. (Not httpServer.close(): Node
      // would also drop the idle keep-alive and upgraded sockets before they are told.)
      inflight.draining = true;
      // Streams this node was sweeping are swept by the other nodes (Redis) from now on.
      streams.close();
      // Deliveries in progress finish (bounded by their timeout) while commands drain.
      const deliveryStopped = delivery?.stop();
      if (!(await inflight.drain(drainMs))) {
        logger.warn({ inflight: inflight.size }, "shutdown: commands still running after drain");
      }
      io.local.emit("connection:closing", {
        reason: DisconnectReason.SERVER_SHUTDOWN,
        message: "This server is shutting down; reconnect",
        reconnect: true,
      });
      io.local.disconnectSockets(true);
      // Each connection closes once its last packets (acks, connection:closing) are written;
      // io.close() would discard what is still buffered, so wait for that first (bounded).
      const deadline = Date.now() + 2000;
      while (io.engine.clientsCount > 0 && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 10));
      }
      stopResyncs?.();
      broadcaster.close();
      rateLimits.close();
      await users.close();
      await io.close();
      await deliveryStopped;
      await delivery?.database?.close();
    },
  };
}

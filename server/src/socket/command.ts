import { ZodError } from "zod";
import {
  type Ack,
  type CommandName,
  type CommandResults,
  DisconnectReason,
  ErrorCode,
  Limits,
  type ProtocolError,
} from "../../../protocol/index.js";
import { isUnavailable } from "../db/errors.js";
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";
import {
  type CommandPayload,
  commandSchemas,
  compiledCommandSchemas,
} from "../protocol-schemas.js";
import { AppError, withTimeout } from "../services/errors.js";
import type { CommandBucket } from "../services/rate-limits.js";
import type { Inflight } from "./inflight.js";
import { PageGate, UserPageGates } from "./page-gate.js";
import type { ChatSocket } from "./types.js";

const MAX_DETAILS = 20;

/**
 * A command's handler: the socket that sent it (its user is `socket.data`, which is an Actor)
 * and the validated payload. It returns the ack's data. `signal` aborts when nobody waits for
 * the answer any more (the command timed out, or the socket is gone): reads pass it to their
 * queries, which are then not sent if they have not been yet; writes ignore it and finish.
 * Only the page commands (pageCommands) get a signal that can abort; the others get one that
 * never does (Cancellation).
 */
export type CommandHandler<C extends CommandName> = (
  socket: ChatSocket,
  payload: CommandPayload<C>,
  signal: AbortSignal,
) => Promise<CommandResults[C]>;

/** Every command's handler. Built once per node and shared by all its sockets. */
export type CommandHandlers = { [C in CommandName]: CommandHandler<C> };

export interface CommandContext {
  logger: Logger;
  /** Commands in progress; refuses new ones while the node drains. */
  inflight: Inflight;
  metrics: Metrics;
  /** A command not done after this many milliseconds is answered UNAVAILABLE. */
  timeoutMs: number;
  /** Page commands one socket may have running; default Limits.MAX_PAGES_IN_FLIGHT. */
  maxPagesInFlight?: number;
  /**
   * The node's per-user page gates (see `userPageGates`), shared by all its sockets: a user's
   * sockets together run no more page commands at once than one socket may.
   */
  userPages: UserPageGates;
  /** Checked before every command but `auth:refresh`; throws an AppError to refuse. */
  guard?: (socket: ChatSocket, command: CommandName) => void;
}

/**
 * Serves the node's commands on a socket, as a single middleware (Socket.IO runs `socket.use`
 * for every incoming event, before any listener): no listener and no closure per command per
 * socket, which is most of what an idle socket would otherwise cost. For every event, in order:
 * 1. the socket's rate limit (`admit`), which applies to every event, known or not;
 * 2. an unknown event is answered UNKNOWN_COMMAND when it carries an ack;
 * 3. a command (payload, ack) is validated with the protocol's zod schema, run, and acked
 *    `{ ok: true, data }` or `{ ok: false, error }`. One without an ack callback is dropped:
 *    there is nobody to answer. Page commands pass the socket's PageGate, then their user's
 *    (ctx.userPages): a few run at once, some more wait, and beyond that they are refused
 *    RATE_LIMITED, so neither one socket nor one user's many sockets can have the node build
 *    many large answers at once. The wait is part of the command's time.
 *
 * A command that timed out has its signal aborted (its reads not yet sent are dropped); so do
 * all of a socket's commands when it disconnects, and nothing is acked to a socket that is gone.
 */
export function serveCommands(
  socket: ChatSocket,
  handlers: CommandHandlers,
  bucket: CommandBucket,
  ctx: CommandContext,
): void {
  const maxPages = ctx.maxPagesInFlight ?? Limits.MAX_PAGES_IN_FLIGHT;
  const gate = new PageGate(maxPages, maxPages * PAGES_WAITING_PER_SLOT);
  // This socket's commands in progress; aborted together when it goes.
  const running = new Set<Cancellation>();
  socket.once("disconnect", () => {
    for (const c of running) c.abort();
  });
  socket.use((event) => {
    if (!admit(socket, event, bucket, ctx)) return;
    // Arguments come from the network: typed as unknown and checked here.
    const [name, ...args] = event as unknown[];
    const ack = args.at(-1);
    if (!isCommand(name)) {
      if (typeof ack === "function") {
        ack({
          ok: false,
          error: { code: ErrorCode.UNKNOWN_COMMAND, message: "Unknown command" },
        } satisfies Ack<never>);
      }
      return;
    }
    if (typeof ack !== "function") {
      ctx.logger.debug(
        { command: name, userId: socket.data.userId },
        "command without ack dropped",
      );
      return;
    }
    const raw = args.length >= 2 ? args[0] : {};
    const end = ctx.metrics.commandDuration.startTimer({ command: name });
    const controller = new Cancellation();
    running.add(controller);
    const release = () => running.delete(controller);
    const handler = handlers[name] as CommandHandler<typeof name>;
    const gated: CommandHandler<typeof name> = pageCommands.has(name)
      ? async (s, payload, signal) => {
          await gate.acquire(signal);
          try {
            const user = s.data.userId;
            await ctx.userPages.acquire(user, signal);
            try {
              return await handler(s, payload, signal);
            } finally {
              ctx.userPages.release(user);
            }
          } finally {
            gate.release();
          }
        }
      : handler;
    void run(socket, name, raw, gated, ctx, controller, release).then((result) => {
      ctx.metrics.commands.inc({ command: name, outcome: result.ok ? "ok" : result.error.code });
      // A socket that is gone gets nothing (its answer may be large, and nobody reads it).
      if (socket.connected) ack(result);
      end(); // after the ack: the histogram includes encoding it and handing it to the socket
    });
  });
}

/** Page commands that may wait for a slot, per slot (8 running: 32 waiting). */
const PAGES_WAITING_PER_SLOT = 4;

/**
 * The node's per-user page gates: Limits.MAX_PAGES_IN_FLIGHT_PER_USER running for all of a
 * user's sockets together, four times as many waiting.
 */
export function userPageGates(
  maxRunning: number = Limits.MAX_PAGES_IN_FLIGHT_PER_USER,
): UserPageGates {
  return new UserPageGates(maxRunning, maxRunning * PAGES_WAITING_PER_SLOT);
}

/** The commands whose answers are pages of stored data, up to Limits.MAX_PAGE_BYTES each. */
const pageCommands: ReadonlySet<CommandName> = new Set<CommandName>([
  "chat:list",
  "chat:open",
  "message:history",
  "message:sync",
]);

/**
 * A command's cancellation. The AbortController behind `signal` (about 3 µs to make, on every
 * command) is made only for the commands whose handlers read the signal (pageCommands: reads
 * that pass it to their queries); the others get NEVER_ABORTED, which they ignore (writes
 * finish whatever happens). `aborted` is known either way.
 */
class Cancellation {
  private controller: AbortController | undefined;
  aborted = false;

  signalFor(name: CommandName): AbortSignal {
    if (!pageCommands.has(name)) return NEVER_ABORTED;
    this.controller ??= new AbortController();
    if (this.aborted) this.controller.abort();
    return this.controller.signal;
  }

  abort(): void {
    if (this.aborted) return;
    this.aborted = true;
    this.controller?.abort();
  }
}

/** The signal of the commands that do not read theirs (see Cancellation). Never aborted. */
const NEVER_ABORTED: AbortSignal = new AbortController().signal;

async function run<C extends CommandName>(
  socket: ChatSocket,
  name: C,
  raw: unknown,
  handler: CommandHandler<C>,
  ctx: CommandContext,
  controller: Cancellation,
  /** Called once the command's work has settled (or never started). */
  release: () => void,
): Promise<Ack<CommandResults[C]>> {
  let started = false;
  try {
    if (ctx.inflight.draining) {
      throw new AppError(
        ErrorCode.UNAVAILABLE,
        "This server is shutting down; retry after reconnecting",
      );
    }
    if (name !== "auth:refresh") ctx.guard?.(socket, name);
    const payload = compiledCommandSchemas[name].parse(raw) as CommandPayload<C>;
    const work = ctx.inflight.track(handler(socket, payload, controller.signalFor(name)));
    started = true;
    void work.then(release, release);
    return {
      ok: true,
      data: await withTimeout(work, ctx.timeoutMs, () => controller.abort()),
    };
  } catch (err) {
    if (!started) release();
    if (controller.aborted && !socket.connected) {
      // Cancelled because the socket went away: nobody to answer, nothing to log.
      return { ok: false, error: { code: ErrorCode.UNAVAILABLE, message: "Disconnected" } };
    }
    return {
      ok: false,
      error: toProtocolError(err, { command: name, userId: socket.data.userId }, ctx.logger),
    };
  }
}

/** Maps anything thrown by a command to the protocol's closed set of errors. */
export function toProtocolError(
  err: unknown,
  context: Record<string, unknown>,
  logger: Logger,
): ProtocolError {
  if (err instanceof AppError) return err.toProtocol();
  if (err instanceof ZodError) {
    return {
      code: ErrorCode.INVALID_PAYLOAD,
      message: "The payload is invalid",
      details: err.issues.slice(0, MAX_DETAILS).map((i) => ({
        path: i.path.map(String).join(".") || "(payload)",
        message: i.message,
      })),
    };
  }
  if (isUnavailable(err)) {
    logger.warn({ ...context, err: String(err) }, "database unavailable");
    return {
      code: ErrorCode.UNAVAILABLE,
      message: "The service is temporarily unavailable; retry",
    };
  }
  logger.error({ ...context, err }, "command failed");
  return { code: ErrorCode.INTERNAL, message: "Internal error" };
}

function isCommand(event: unknown): event is CommandName {
  return typeof event === "string" && Object.hasOwn(commandSchemas, event);
}

/**
 * Rate-limits every event the socket sends (commands, unknown events, events without an ack)
 * with the socket's own bucket, before anything else runs. A refused event is answered
 * RATE_LIMITED with `retryAfterMs` when it carries an ack, and goes no further (false). A
 * socket that goes on flooding while refused gets `connection:closing` COMMAND_FLOOD and is
 * disconnected.
 */
function admit(
  socket: ChatSocket,
  event: unknown[],
  bucket: CommandBucket,
  ctx: CommandContext,
): boolean {
  const verdict = bucket.take();
  if (verdict.allowed) return true;
  const [name] = event;
  // Unknown names are not used as labels: a client could make up any number of them.
  ctx.metrics.commands.inc({
    command: isCommand(name) ? name : "(unknown)",
    outcome: ErrorCode.RATE_LIMITED,
  });
  const ack = event.at(-1);
  if (typeof ack === "function") {
    ack({
      ok: false,
      error: {
        code: ErrorCode.RATE_LIMITED,
        message: "Too many commands on this connection; slow down",
        retryAfterMs: verdict.retryAfterMs,
      },
    } satisfies Ack<never>);
  }
  if (verdict.flooding && socket.connected) {
    ctx.logger.warn({ userId: socket.data.userId }, "socket disconnected: command flood");
    socket.emit("connection:closing", {
      reason: DisconnectReason.COMMAND_FLOOD,
      message: "Too many commands after being told to slow down",
      reconnect: true,
    });
    socket.disconnect(true);
  }
  return false;
}

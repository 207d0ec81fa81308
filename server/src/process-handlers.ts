import type { Logger } from "./logger.js";

/**
 * What the process does with an error nobody caught (main.ts installs these once, at start).
 *
 * - An **unhandled rejection** is logged and the node keeps serving. Node's default would end
 *   the process, and with it every socket and every command in progress, for a promise that a
 *   library dropped: postgres.js does exactly that when a connection is terminated while it
 *   starts up (porsager/postgres#1192, #1205, #1223; fetch_types is off here for that reason,
 *   but a driver or library may have other such paths). A rejected promise has unwound only its
 *   own async function, so the rest of the process is in a known state; the command that was
 *   waiting on that work, if any, still gets its answer (its own error, or the command timeout).
 * - An **uncaught exception** is logged and the process exits (code 1): a synchronous throw can
 *   leave any half-done state behind, and Node documents that resuming after it is unsafe. The
 *   orchestrator restarts the node; clients reconnect and catch up (docs/protocol.md).
 */
export function installProcessHandlers(
  logger: Logger,
  exit: (code: number) => void = process.exit,
): void {
  process.on("unhandledRejection", (reason) => {
    logger.error({ err: reason }, "unhandled promise rejection (logged; the node keeps serving)");
  });
  process.on("uncaughtException", (err, origin) => {
    logger.fatal({ err, origin }, "uncaught exception: exiting");
    exit(1);
  });
}

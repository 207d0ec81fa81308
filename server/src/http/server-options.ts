/**
 * Options of the node's HTTP server: how long a client may take to send a request. Node's
 * defaults (60 s for the headers, 300 s for the whole request, checked every 30 s) let a client
 * hold a connection and its buffers for minutes without authenticating; these bound it.
 * main.ts and the tests build their servers with them.
 */
import type { ServerOptions } from "node:http";

export interface HttpTimeouts {
  /** Milliseconds from the connection (or the previous request) to the end of the headers. */
  headersTimeoutMs: number;
  /** Milliseconds a body may take to arrive (service API, webhooks: 408 past it). */
  bodyTimeoutMs: number;
}

export const DEFAULT_HTTP_TIMEOUTS: HttpTimeouts = {
  headersTimeoutMs: 10_000,
  bodyTimeoutMs: 10_000,
};

export function httpServerOptions(timeouts: HttpTimeouts = DEFAULT_HTTP_TIMEOUTS): ServerOptions {
  return {
    headersTimeout: timeouts.headersTimeoutMs,
    // The whole request, any route: the headers, then the body. The routes that read a body
    // answer 408 at their own deadline first; this is the backstop (Node destroys the socket).
    requestTimeout: timeouts.headersTimeoutMs + timeouts.bodyTimeoutMs + 1000,
    // How often Node checks the two deadlines above (default 30 s, far coarser than they are).
    connectionsCheckingInterval: 1000,
  };
}

/**
 * Which browser origins may open a connection. A browser always sends `Origin` with a WebSocket
 * handshake, and a page cannot forge it, so checking it stops other sites' pages from connecting
 * from a user's browser. Clients that send no Origin are not browsers (native apps, servers,
 * scripts); neither are clients such as python-socketio (websocket-client), which always send
 * `Origin: http(s)://<host>:<port>` naming the server itself. Both could send any Origin they
 * liked, so the check means nothing for them, and they authenticate with a token anyway.
 *
 * The same-origin rule (an Origin whose host and port are the request's `Host`) admits those
 * clients and pages served by this host. It admits no foreign page: a browser's Host is the
 * server it connects to and its Origin the page's, so they match only for a page of this very
 * host. (A DNS-rebinding page, whose own name points at the server, does match, but it is then
 * just another token-less script: the server has no cookies or other ambient credentials that a
 * browser would attach for it.)
 */

/** The origins allowed to connect. */
export interface OriginPolicy {
  /** Exact origins (`scheme://host[:port]`, normalized by normalizeOrigin). */
  allowed: string[];
  /** Also allow any loopback origin (localhost, 127.0.0.1, [::1], any port): development only. */
  loopback: boolean;
}

const LOOPBACK_HOSTS = new Set(["localhost", "127.0.0.1", "[::1]"]);

/**
 * The canonical form of an origin (lower-case scheme and host, default port dropped), or
 * undefined when `value` is not exactly an http(s) origin (a path, a wildcard, `null`).
 */
export function normalizeOrigin(value: string): string | undefined {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return undefined;
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") return undefined;
  // Nothing but scheme, host and port: no path, query, fragment or credentials.
  if (url.href !== `${url.origin}/` || url.hostname.includes("*")) return undefined;
  return url.origin;
}

/**
 * The `host[:port]` of `host` (a Host header) as a URL of `protocol` would spell it (lower case,
 * default port dropped), or undefined when it is not exactly a host.
 */
function hostAs(protocol: string, host: string): string | undefined {
  try {
    const url = new URL(`${protocol}//${host}`);
    return url.href === `${url.origin}/` ? url.host : undefined;
  } catch {
    return undefined;
  }
}

/**
 * A predicate over a request's Origin header (and its Host header): true for no Origin (not a
 * browser), for an allowed origin and for the server's own origin (Origin's host and port equal
 * Host, either scheme: TLS usually ends at a proxy, so the node cannot tell which one its clients
 * use); false for anything else, including `Origin: null` (sandboxed frames, `file:` pages).
 */
export function originChecker(
  policy: OriginPolicy,
): (origin: string | undefined, host?: string | undefined) => boolean {
  const allowed = new Set(policy.allowed);
  return (origin, host) => {
    if (origin === undefined) return true;
    const normalized = normalizeOrigin(origin);
    if (!normalized) return false;
    if (allowed.has(normalized)) return true;
    const url = new URL(normalized);
    if (host !== undefined && hostAs(url.protocol, host) === url.host) return true;
    return policy.loopback && LOOPBACK_HOSTS.has(url.hostname);
  };
}

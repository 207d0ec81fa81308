/**
 * Which browser origins may open a connection. A browser always sends `Origin` with a WebSocket
 * handshake, and a page cannot forge it, so checking it stops other sites from using a signed-in
 * user's browser against this server. Clients that send no Origin are not browsers (native apps,
 * servers, scripts): they could send any Origin they like, so the check means nothing for them,
 * and they authenticate with a token anyway.
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
 * A predicate over a request's Origin header: true for no header (not a browser) and for an
 * allowed origin; false for anything else, including `Origin: null` (sandboxed frames, files).
 */
export function originChecker(policy: OriginPolicy): (origin: string | undefined) => boolean {
  const allowed = new Set(policy.allowed);
  return (origin) => {
    if (origin === undefined) return true;
    const normalized = normalizeOrigin(origin);
    if (!normalized) return false;
    if (allowed.has(normalized)) return true;
    return policy.loopback && LOOPBACK_HOSTS.has(new URL(normalized).hostname);
  };
}

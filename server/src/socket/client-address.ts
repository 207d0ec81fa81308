/**
 * The client address that per-address limits count. By default the TCP peer: a client cannot
 * choose it. Behind reverse proxies the peer is the proxy, so with `trustedProxies` = n the
 * address is the n-th entry of `X-Forwarded-For` counted from the right, the one the outermost
 * trusted proxy wrote (nginx's `$proxy_add_x_forwarded_for` appends the address it saw). Entries
 * further left were written by the client and are never used. This is only sound when the node
 * cannot be reached except through those proxies.
 */
import { isIPv4, isIPv6 } from "node:net";

/** The address of the client that sent `req`, as a limiter key (see addressKey). */
export function clientAddress(
  req: {
    headers: Record<string, string | string[] | undefined>;
    socket: { remoteAddress?: string | undefined };
  },
  trustedProxies: number,
): string {
  const peer = req.socket.remoteAddress ?? "unknown";
  if (trustedProxies <= 0) return addressKey(peer);
  const header = req.headers["x-forwarded-for"];
  const forwarded = (Array.isArray(header) ? header.join(",") : (header ?? ""))
    .split(",")
    .map((entry) => entry.trim())
    .filter(Boolean);
  const chain = [...forwarded, peer];
  return addressKey(chain[Math.max(0, chain.length - 1 - trustedProxies)] ?? peer);
}

/**
 * One key per client: IPv4-mapped IPv6 addresses become IPv4, and an IPv6 address counts as its
 * /64 network (one subscriber usually holds a whole /64, so per-address limits would be
 * meaningless per single IPv6 address). Anything else is kept, truncated, as is.
 */
export function addressKey(address: string): string {
  const bare = address.replace(/^\[(.*)\](:\d+)?$/, "$1");
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(bare);
  if (mapped?.[1]) return mapped[1];
  if (isIPv4(bare)) return bare;
  if (isIPv6(bare)) return `${expandIPv6(bare).slice(0, 4).join(":")}::/64`;
  return bare.slice(0, 64);
}

/** The eight 16-bit groups of an IPv6 address, as lower-case hex without leading zeros. */
function expandIPv6(address: string): string[] {
  const withoutZone = address.split("%")[0] ?? address;
  const [head = "", tail] = withoutZone.split("::");
  const part = (s: string) => (s ? s.split(":") : []);
  const left = part(head);
  const right = tail === undefined ? [] : part(tail);
  // Only the first four groups are used, which an embedded IPv4 tail never shifts.
  const groups = [
    ...left,
    ...Array(Math.max(0, 8 - left.length - right.length)).fill("0"),
    ...right,
  ];
  return groups.map((g) => (g.includes(".") ? g : Number.parseInt(g, 16).toString(16)));
}

/** Helpers of the demo that are not components: tokens, times, the address, logging. */

/** Where the signed-in user id is kept, so that a reload stays signed in (development only). */
export const USER_KEY = "chat-demo:user";
/** The title the server gives a new chat; such a chat takes its first message as title. */
export const DEFAULT_TITLE = "New Chat";
/** Wider than this, the chat list is a column; narrower, a drawer (demo.css has the same). */
export const DESKTOP_QUERY = "(min-width: 761px)";

/**
 * A development token from `POST /dev/token`; null (signed out) when the server has no dev
 * tokens or refuses the id. In an app, pass Clerk's `getToken` instead.
 */
export async function fetchToken(userId: string): Promise<string | null> {
  const res = await fetch("/dev/token", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ userId }),
  });
  if (res.status === 400 || res.status === 404) return null;
  if (!res.ok) throw new Error(`POST /dev/token: HTTP ${res.status}`);
  return ((await res.json()) as { token: string }).token;
}

export function report(context: string, err: unknown): void {
  console.warn(`[demo] ${context}:`, err);
}

/** The chat named in the address (`#chat=<id>`: a reload, or a shared link). */
export function linkedChat(): string | null {
  return /^#chat=([0-9a-f-]{36})$/.exec(location.hash)?.[1] ?? null;
}

/** Puts the open chat in the address, so that a reload opens it again. */
export function linkChat(chatId: string | null): void {
  history.replaceState(null, "", chatId ? `#chat=${chatId}` : location.pathname);
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dayFormat = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });

/** A message's time: `14:05` today, `Dec 1, 14:05` before. */
export function messageTime(iso: string): string {
  const d = new Date(iso);
  const today = new Date().toDateString() === d.toDateString();
  return today ? timeFormat.format(d) : `${dayFormat.format(d)}, ${timeFormat.format(d)}`;
}

/** A sidebar entry's age: `now`, `5m`, `3h`, `Dec 1`. */
export function ago(iso: string, now: number): string {
  const seconds = (now - new Date(iso).getTime()) / 1000;
  if (seconds < 60) return "now";
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m`;
  if (seconds < 86_400) return `${Math.floor(seconds / 3600)}h`;
  return dayFormat.format(new Date(iso));
}

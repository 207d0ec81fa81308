/** Small helpers with no platform dependencies (browsers, React Native, Node). */

export type Timer = ReturnType<typeof setTimeout>;

/** A random RFC 4122 v4 UUID: `crypto.randomUUID`, else `crypto.getRandomValues`, else Math.random. */
export function randomId(): string {
  const c = (globalThis as { crypto?: Partial<Crypto> }).crypto;
  if (typeof c?.randomUUID === "function") return c.randomUUID();
  const bytes = new Uint8Array(16);
  if (typeof c?.getRandomValues === "function") {
    c.getRandomValues(bytes);
  } else {
    // Last resort (old React Native without react-native-get-random-values). The ids only
    // need to be unique per chat, which this still is in practice.
    for (let i = 0; i < 16; i++) bytes[i] = Math.floor(Math.random() * 256);
  }
  bytes[6] = ((bytes[6] ?? 0) & 0x0f) | 0x40;
  bytes[8] = ((bytes[8] ?? 0) & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** The time claims of a JWT, in epoch milliseconds (server clock). */
export interface TokenTimes {
  exp: number;
  /** `iat`, else `nbf`: when the token's lifetime started. */
  start: number | undefined;
}

/**
 * `exp` (and `iat`/`nbf`) of a JWT, decoded with `atob`; undefined if the token cannot be
 * decoded. The signature is not checked: this only schedules the refresh; the server verifies.
 */
export function tokenTimes(token: string): TokenTimes | undefined {
  const part = token.split(".")[1];
  const decode = (globalThis as { atob?: (s: string) => string }).atob;
  if (!part || typeof decode !== "function") return undefined;
  try {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(decode(b64 + "=".repeat((4 - (b64.length % 4)) % 4))) as Record<
      string,
      unknown
    >;
    const seconds = (v: unknown) =>
      typeof v === "number" && Number.isFinite(v) ? v * 1000 : undefined;
    const exp = seconds(claims.exp);
    return exp === undefined
      ? undefined
      : { exp, start: seconds(claims.iat) ?? seconds(claims.nbf) };
  } catch {
    return undefined;
  }
}

/**
 * When to refresh a token, in ms from now: at `fraction` of its remaining lifetime by the
 * device's clock, bounded by its real lifetime (exp − iat, immune to clock skew) so that a
 * device clock that is off neither spins nor sleeps past the expiry.
 */
export function refreshDelay(times: TokenTimes, now: number, fraction = 0.7): number {
  const byClock = (times.exp - now) * fraction;
  if (times.start === undefined || times.start >= times.exp) return Math.max(1000, byClock);
  const lifetime = times.exp - times.start;
  const floor = Math.min(lifetime * 0.2, 5000);
  return Math.round(Math.min(Math.max(byClock, floor), lifetime * fraction));
}

/** Exponential backoff with full jitter: attempt 0 → up to `base`, doubling up to `max`. */
export function backoff(attempt: number, base = 500, max = 10_000): number {
  const ceiling = Math.min(max, base * 2 ** Math.min(attempt, 16));
  return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
}

/** Shallow equality of two arrays (same length, same elements by identity). */
export function sameItems<T>(a: readonly T[], b: readonly T[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * An external store in the shape React's `useSyncExternalStore` wants: `subscribe` and
 * `getSnapshot` are bound (pass them as they are), and the snapshot is an immutable value whose
 * identity changes only when its content does.
 */
export class Store<T> {
  private readonly listeners = new Set<() => void>();

  private snapshot: T;

  constructor(snapshot: T) {
    this.snapshot = snapshot;
  }

  readonly getSnapshot = (): T => this.snapshot;

  readonly subscribe = (listener: () => void): (() => void) => {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  };

  /** Replaces the snapshot (if it is a different value) and notifies the listeners. */
  protected publish(next: T): void {
    if (Object.is(next, this.snapshot)) return;
    this.snapshot = next;
    for (const listener of [...this.listeners]) callSafely(listener);
  }
}

/** Calls a listener; an exception is rethrown asynchronously so one listener cannot break the SDK. */
export function callSafely<A extends unknown[]>(fn: (...args: A) => void, ...args: A): void {
  try {
    fn(...args);
  } catch (err) {
    setTimeout(() => {
      throw err;
    }, 0);
  }
}

/** A minimal typed event emitter. */
export class Emitter<E extends { [K in keyof E]: (...args: never[]) => void }> {
  private readonly listeners = new Map<keyof E, Set<E[keyof E]>>();

  on<K extends keyof E>(event: K, listener: E[K]): () => void {
    let set = this.listeners.get(event);
    if (!set) {
      set = new Set();
      this.listeners.set(event, set);
    }
    set.add(listener);
    return () => {
      set.delete(listener);
    };
  }

  emit<K extends keyof E>(event: K, ...args: Parameters<E[K]>): void {
    const set = this.listeners.get(event);
    if (!set) return;
    for (const listener of [...set]) {
      callSafely(listener as unknown as (...a: Parameters<E[K]>) => void, ...args);
    }
  }

  clear(): void {
    this.listeners.clear();
  }
}

/** A store whose owner sets the value (`set` publishes only a different value). */
export class ValueStore<T> extends Store<T> {
  set(value: T): void {
    this.publish(value);
  }
}

/**
 * The timers of one component: `later` and `sleep` (a sleep resolves early on `clear`), all
 * cancelled by `clear()` so that nothing runs after a close.
 */
export class Timers {
  private readonly timers = new Set<Timer>();
  private readonly sleepers = new Set<() => void>();
  private cleared = false;

  later(ms: number, fn: () => void): Timer {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      fn();
    }, ms);
    this.timers.add(timer);
    return timer;
  }

  cancel(timer: Timer | undefined): void {
    if (timer === undefined) return;
    clearTimeout(timer);
    this.timers.delete(timer);
  }

  sleep(ms: number): Promise<void> {
    if (this.cleared) return Promise.resolve();
    return new Promise((resolve) => {
      const wake = () => {
        this.sleepers.delete(wake);
        this.cancel(timer);
        resolve();
      };
      this.sleepers.add(wake);
      const timer = this.later(ms, wake);
    });
  }

  clear(): void {
    this.cleared = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    for (const wake of [...this.sleepers]) wake();
    this.sleepers.clear();
  }
}

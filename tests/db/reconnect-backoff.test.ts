/**
 * The server's Postgres pools (db/client.ts) reconnect at most about a second apart after an
 * outage. postgres.js's own backoff grows with the failed connection attempts of the whole pool
 * (0.5–1 × 3^n / 100 s, up to 20 s), so after an outage of several seconds a pool could wait
 * 10–20 s before it even tried again (the webhook bench saw 18–30 s catch-ups). Here a real
 * Postgres is reached through a TCP proxy (tests/helpers/tcp-proxy.ts) that drops every
 * connection and refuses new ones while queries keep coming (as sends do). Two pools go through
 * the same outage: the server's (createDatabase's defaults), and one with the driver's own
 * backoff formula, which records how far it grew: far enough that the driver would now wait
 * more than 5 s. Once the proxy lets connections through again, the server's pool must answer
 * a query within about two seconds.
 */
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createDatabase, type DatabaseHandle } from "../../server/src/db/client.js";
import { createTestDatabase, type TestDatabase } from "../helpers/db.js";
import { TcpProxy } from "../helpers/tcp-proxy.js";

const OUTAGE_MS = 8000;
/** Queries in flight on each pool during the outage (a busy node's pool keeps trying). */
const LOOPERS = 6;

let tdb: TestDatabase;
let proxy: TcpProxy;
beforeAll(async () => {
  tdb = await createTestDatabase();
  proxy = new TcpProxy(Number(new URL(tdb.url).port || 5432));
  await proxy.start();
});
afterAll(async () => {
  await proxy?.close();
  await tdb?.drop();
});

function throughProxy(): string {
  const u = new URL(tdb.url);
  u.hostname = "127.0.0.1";
  u.port = String(proxy.port);
  return u.toString();
}

/** Queries on `sql` until the outage ends (none may succeed); resolves with how many failed. */
async function keepTrying(
  sql: postgres.Sql,
  until: number,
): Promise<{ failed: number; ok: number }> {
  const counts = { failed: 0, ok: 0 };
  await Promise.all(
    Array.from({ length: LOOPERS }, async () => {
      while (Date.now() < until) {
        // A query may wait out the driver's backoff: not past the outage's end.
        await Promise.race([
          sql`select 1`.then(
            () => void counts.ok++,
            () => void counts.failed++,
          ),
          new Promise((r) => setTimeout(r, Math.max(0, until - Date.now()))),
        ]);
        await new Promise((r) => setTimeout(r, 20));
      }
    }),
  );
  return counts;
}

describe("Postgres pool reconnect backoff", () => {
  it("every command succeeds within ~2 s of Postgres' return after an outage that grew the driver's own backoff past 5 s", async () => {
    const server: DatabaseHandle = createDatabase(throughProxy(), {
      max: LOOPERS,
      connectTimeoutSeconds: 2,
    });
    // The driver's default backoff, recording the retry counts it is called with.
    const retries: number[] = [];
    const driver = postgres(throughProxy(), {
      max: LOOPERS,
      connect_timeout: 2,
      fetch_types: false,
      onnotice: () => {},
      backoff: (n: number) => {
        retries.push(n);
        return (0.5 + Math.random() / 2) * Math.min(3 ** n / 100, 20);
      },
    });
    try {
      // Every connection of both pools open and used.
      await Promise.all(
        [server.sql, driver].flatMap((sql) =>
          Array.from({ length: LOOPERS }, () => sql`select pg_sleep(0.05)`),
        ),
      );
      proxy.cut();
      const until = Date.now() + OUTAGE_MS;
      const [mine, theirs] = await Promise.all([
        keepTrying(server.sql, until),
        keepTrying(driver, until),
      ]);
      expect(mine.ok + theirs.ok).toBe(0);
      expect(mine.failed).toBeGreaterThan(LOOPERS);
      // The driver's next wait: at least half of min(3^n / 100, 20) seconds.
      const grown = Math.max(...retries);
      expect(0.5 * Math.min(3 ** grown / 100, 20)).toBeGreaterThan(5);

      proxy.restore();
      const restoredAt = Date.now();
      // As many commands at once as the pool has connections (each holds its connection a
      // little, so each needs one of its own): every one must be answered, whichever
      // connection it waits for. A command that fails is sent again at once.
      const answeredAfter = await Promise.all(
        Array.from({ length: LOOPERS }, async () => {
          while (Date.now() - restoredAt < 15_000) {
            const ok = await server.sql`select pg_sleep(0.2), 1 as one`.then(
              (rows) => rows[0]?.one === 1,
              () => false,
            );
            if (ok) return Date.now() - restoredAt;
          }
          return Number.POSITIVE_INFINITY;
        }),
      );
      const recoveredAfter = Math.max(...answeredAfter);
      expect(recoveredAfter).toBeLessThan(2000);
    } finally {
      proxy.restore();
      await server.close().catch(() => {});
      await driver.end({ timeout: 1 }).catch(() => {});
    }
  }, 40_000);
});

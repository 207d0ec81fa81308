/**
 * User provisioning on the handshake path (UserService.provision): the first connection of a
 * user creates their row; a reconnect of a known user costs no database round trip, and its
 * last_seen_at is written by one coalesced statement. Real Postgres; the repository is the real
 * one, observed (not replaced) with a spy to count its round trips.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test, vi } from "vitest";
import { createDatabase, type DatabaseHandle } from "../../server/src/db/client.js";
import { UserRepository } from "../../server/src/repositories/user.repository.js";
import { REVOCATION_TTL_MS } from "../../server/src/services/revocations.js";
import { UserService } from "../../server/src/services/user.service.js";
import { type FileDb, openFileDb } from "./fixtures.js";

let fdb: FileDb;
let handle: DatabaseHandle;
const services: UserService[] = [];

beforeAll(async () => {
  fdb = await openFileDb();
  handle = createDatabase(fdb.tdb.url, { max: 4 });
});
afterEach(async () => {
  await Promise.all(services.splice(0).map((s) => s.close()));
  vi.restoreAllMocks();
});
afterAll(async () => {
  await handle?.close();
  await fdb?.close();
});

function service(options: ConstructorParameters<typeof UserService>[1] = {}) {
  const repo = new UserRepository(handle.db);
  const users = new UserService(repo, { seenFlushMs: 50, ...options });
  services.push(users);
  return { repo, users };
}

async function seenUs(clerkId: string): Promise<bigint | undefined> {
  const [row] = await fdb.sql<{ us: string }[]>`
    select (extract(epoch from last_seen_at) * 1000000)::bigint::text as us
      from users where clerk_id = ${clerkId}`;
  return row ? BigInt(row.us) : undefined;
}

describe("provisioning", () => {
  test("a known user's reconnects cost no upsert; their last_seen_at is written in one batch", async () => {
    const { repo, users } = service();
    const upsert = vi.spyOn(repo, "upsertSeenMany");
    const touch = vi.spyOn(repo, "touchSeen");
    const ids = ["user_prov_a", "user_prov_b", "user_prov_c"];
    const rowIds = await Promise.all(ids.map((id) => users.provision(id)));
    // Three new users at once: one statement creates all three rows.
    expect(upsert).toHaveBeenCalledTimes(1);
    const firstSeen = await Promise.all(ids.map(seenUs));

    for (let round = 0; round < 5; round++) {
      expect(await Promise.all(ids.map((id) => users.provision(id)))).toEqual(rowIds);
    }
    expect(upsert).toHaveBeenCalledTimes(1);
    await users.flushSeen();
    expect(touch).toHaveBeenCalledTimes(1);
    expect(new Set(touch.mock.calls[0]?.[0])).toEqual(new Set(ids));
    const later = await Promise.all(ids.map(seenUs));
    later.forEach((us, i) => {
      expect(us).toBeGreaterThan(firstSeen[i] as bigint);
    });
  });

  test("a burst of first handshakes shares a few statements; each gets its own row", async () => {
    const { repo, users } = service();
    const upsert = vi.spyOn(repo, "upsertSeenMany");
    const ids = Array.from({ length: 1500 }, (_, i) => `user_burst_${i}`);
    // Every user twice (two devices at once): both get the same row, created once.
    const got = await Promise.all([...ids, ...ids].map((id) => users.provision(id)));
    const rows = await fdb.sql<{ id: string; clerk_id: string }[]>`
      select id, clerk_id from users where clerk_id like 'user_burst_%'`;
    expect(rows).toHaveLength(ids.length);
    const byClerk = new Map(rows.map((r) => [r.clerk_id, r.id]));
    expect(got).toEqual([...ids, ...ids].map((id) => byClerk.get(id)));
    // 1,000 users per statement at most: two statements for 1,500, not 3,000 round trips.
    expect(upsert).toHaveBeenCalledTimes(2);
    expect(upsert.mock.calls.map((c) => c[0].length)).toEqual([1000, 500]);
  });

  test("a failed provisioning statement fails its handshakes; the next batch succeeds", async () => {
    const { repo, users } = service();
    const upsert = vi
      .spyOn(repo, "upsertSeenMany")
      .mockRejectedValueOnce(new Error("connection lost"));
    const failed = await Promise.allSettled(
      ["user_fail_a", "user_fail_b"].map((id) => users.provision(id)),
    );
    expect(failed.map((r) => r.status)).toEqual(["rejected", "rejected"]);
    expect(await seenUs("user_fail_a")).toBeUndefined();
    const again = await users.provision("user_fail_a");
    expect(again).toMatch(/^[0-9a-f-]{36}$/);
    expect(await seenUs("user_fail_a")).toBeDefined();
    expect(upsert).toHaveBeenCalledTimes(2);
  });

  test("a user whose row disappeared is provisioned again on the next connection", async () => {
    const { repo, users } = service();
    const upsert = vi.spyOn(repo, "upsertSeenMany");
    const first = await users.provision("user_prov_gone");
    await fdb.sql`delete from users where clerk_id = 'user_prov_gone'`;
    // Still trusted until the flush finds the row missing…
    expect(await users.provision("user_prov_gone")).toBe(first);
    await users.flushSeen();
    // …then forgotten: the next connection creates a fresh row.
    const second = await users.provision("user_prov_gone");
    expect(second).not.toBe(first);
    expect(upsert).toHaveBeenCalledTimes(2);
    expect(await seenUs("user_prov_gone")).toBeDefined();
  });

  test("deleting a user through the service forgets them at once, and their row stays deleted", async () => {
    const { repo, users } = service();
    const upsert = vi.spyOn(repo, "upsertSeenMany");
    expect(await users.provision("user_prov_deleted")).toBeDefined();
    expect(await users.delete("user_prov_deleted", Date.now())).toEqual({
      applied: true,
      deleted: true,
    });
    // Not the remembered row id: the database is asked, and its tombstone refuses.
    expect(await users.provision("user_prov_deleted")).toBeUndefined();
    expect(upsert).toHaveBeenCalledTimes(2);
    const [row] = await fdb.sql<{ n: number }[]>`
      select count(*)::int as n from users where clerk_id = 'user_prov_deleted'`;
    expect(row?.n).toBe(0);
  });

  test("a provisioning that runs into a deletion in progress waits for it, then refuses", async () => {
    const { repo } = service();
    const clerkId = "user_prov_racing";
    expect((await repo.upsertSeenMany([clerkId])).get(clerkId)).toBeDefined();
    // A deletion as the repository makes it (lock, tombstone, delete), held open.
    const deletion = await fdb.sql.reserve();
    try {
      await deletion`begin`;
      await deletion`select pg_advisory_xact_lock(1970496882, hashtext(${clerkId}))`;
      await deletion`insert into user_tombstones (clerk_id) values (${clerkId})`;
      await deletion`delete from users where clerk_id = ${clerkId}`;
      const provisioning = repo.upsertSeenMany([clerkId]);
      await expect
        .poll(async () => {
          // Waiting on the lock (or, were there none, on the deletion's row lock).
          const [w] = await fdb.sql<{ n: number }[]>`
            select count(*)::int as n from pg_stat_activity
             where datname = current_database() and wait_event_type = 'Lock'`;
          return w?.n;
        })
        .toBe(1);
      await deletion`commit`;
      expect((await provisioning).get(clerkId)).toBeUndefined();
    } finally {
      deletion.release();
    }
    const [row] = await fdb.sql<{ n: number }[]>`
      select count(*)::int as n from users where clerk_id = ${clerkId}`;
    expect(row?.n).toBe(0);
  });

  test("a known-user TTL as long as a deleted user's revocation is refused", () => {
    expect(() => service({ knownTtlMs: REVOCATION_TTL_MS })).toThrow(RangeError);
  });

  test("an entry expires after its TTL and the oldest entries go first past the cap", async () => {
    // A TTL of 0: every entry has expired by the time it is looked up.
    const { repo, users } = service({ knownTtlMs: 0, maxKnown: 2 });
    const upsert = vi.spyOn(repo, "upsertSeenMany");
    await users.provision("user_prov_ttl");
    await users.provision("user_prov_ttl");
    expect(upsert).toHaveBeenCalledTimes(2);

    const capped = service({ maxKnown: 2 });
    const cappedUpsert = vi.spyOn(capped.repo, "upsertSeenMany");
    for (const id of ["user_cap_1", "user_cap_2", "user_cap_3"]) await capped.users.provision(id);
    await capped.users.provision("user_cap_3"); // still known
    await capped.users.provision("user_cap_1"); // evicted by user_cap_3: provisioned again
    expect(cappedUpsert.mock.calls.map((c) => c[0])).toEqual([
      ["user_cap_1"],
      ["user_cap_2"],
      ["user_cap_3"],
      ["user_cap_1"],
    ]);
  });

  test("a flush while the database is away keeps the users for the next one", async () => {
    const { repo, users } = service();
    await users.provision("user_prov_retry");
    const before = await seenUs("user_prov_retry");
    await users.provision("user_prov_retry");
    const touch = vi.spyOn(repo, "touchSeen").mockRejectedValueOnce(new Error("connection lost"));
    await users.flushSeen();
    expect(touch).toHaveBeenCalledTimes(1);
    await expect.poll(() => touch.mock.calls.length, { timeout: 3000 }).toBe(2);
    await users.flushSeen();
    expect(await seenUs("user_prov_retry")).toBeGreaterThan(before as bigint);
  });
});

describe("stats for many users (the coalesced stats broadcasts)", () => {
  test("one query returns what get_user_stats returns for each user, zeros for unknown users", async () => {
    const { repo, users } = service();
    const ids = ["user_stats_a", "user_stats_b"];
    for (const id of ids) await users.provision(id);
    await fdb.sql`
      update users set message_count = 7, total_searches = 2, token_usage = 9007199254740991
       where clerk_id = 'user_stats_b'`;
    const many = vi.spyOn(repo, "statsMany");
    const got = await users.statsMany([...ids, "user_stats_unknown"]);
    expect(many).toHaveBeenCalledTimes(1);
    for (const id of ids) expect(got.get(id)).toEqual(await users.stats(id));
    expect(got.get("user_stats_b")).toMatchObject({
      messageCount: 7,
      totalSearches: 2,
      tokenUsage: Number.MAX_SAFE_INTEGER,
    });
    expect(got.get("user_stats_unknown")).toEqual(await users.stats("user_stats_unknown"));
    expect(got.get("user_stats_unknown")?.messageCount).toBe(0);
  });
});

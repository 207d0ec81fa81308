/**
 * Page commands are capped per user as well as per socket, against a real server and Postgres.
 * One user with the most sockets a user may open (MAX_SOCKETS_PER_USER's default, 20) fires
 * page commands on all of them while every read of chat_memory waits for a lock the test holds
 * (so nothing the attacker asked for can finish, the worst case of slow reads). Only
 * Limits.MAX_PAGES_IN_FLIGHT_PER_USER of them may be in the database at once, whatever the
 * number of sockets, so the node's pool (10 connections here) keeps room for everybody else: a
 * bystander's `chat:list` answers while the attacker's reads are still stuck. Without the
 * per-user cap, 20 sockets × 8 reads take the whole pool and the bystander waits for the lock.
 */
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { type Ack, Limits } from "../../protocol/index.js";
import { UserPageGates } from "../../server/src/socket/page-gate.js";
import { adminUrl } from "../helpers/db.js";
import {
  type ClientSocket,
  eventually,
  startTestServer,
  type TestServer,
} from "../helpers/server.js";
import { openSql, userId } from "../realtime/support.js";
import { percentiles, waitingReads } from "./hostile.js";

/** The per-user socket cap's default (MAX_SOCKETS_PER_USER). */
const ATTACKER_SOCKETS = 20;
const PER_USER = Limits.MAX_PAGES_IN_FLIGHT_PER_USER;
const PER_SOCKET = Limits.MAX_PAGES_IN_FLIGHT;
/** Generous: the bystander's answer must come while the lock is held, not after it. */
const BYSTANDER_TIMEOUT_MS = 10_000;

let server: TestServer;

beforeAll(async () => {
  server = await startTestServer({ commandTimeoutMs: 30_000 });
});

afterAll(async () => {
  await server?.close();
});

async function timed(socket: ClientSocket): Promise<number> {
  const started = performance.now();
  const page = await socket.timeout(BYSTANDER_TIMEOUT_MS).emitWithAck("chat:list", {});
  if (!page.ok) throw new Error(JSON.stringify(page.error));
  expect(page.data.chats).toHaveLength(1);
  return performance.now() - started;
}

describe("page commands in progress per user", () => {
  test(`a user's ${ATTACKER_SOCKETS} sockets together have at most ${PER_USER} page reads in the database; a bystander's pages still answer`, async () => {
    const database = new URL(server.databaseUrl).pathname.slice(1);
    const admin = postgres(adminUrl, { max: 1, onnotice: () => {} });
    const locker = openSql(server.databaseUrl);
    try {
      const bystander = await server.connectAs(userId("fair_bystander"));
      const own = await bystander.emitWithAck("chat:create", { title: "mine" });
      expect(own.ok).toBe(true);
      const baseline: number[] = [];
      for (let i = 0; i < 5; i++) baseline.push(await timed(bystander));

      const attackerId = userId("fair_attacker");
      const sockets: ClientSocket[] = [];
      for (let i = 0; i < ATTACKER_SOCKETS; i++) sockets.push(await server.connectAs(attackerId));
      const created = await sockets[0]?.emitWithAck("chat:create", { title: "flood" });
      if (!created?.ok) throw new Error("no chat");
      const chatId = created.data.chat.id;

      const total = ATTACKER_SOCKETS * PER_SOCKET;
      // The per-user cap: 8 run and 32 (four per running one) wait; the rest are refused.
      const admitted = PER_USER + PER_USER * 4;
      const acks: Ack<unknown>[] = [];
      const during: number[] = [];
      await locker.begin(async (tx) => {
        // Every read of chat_memory now waits for this transaction: nothing can finish.
        await tx`lock table chat_memory in access exclusive mode`;
        for (const s of sockets) {
          for (let i = 0; i < PER_SOCKET; i++) {
            s.timeout(30_000)
              .emitWithAck("message:history", { chatId })
              .then(
                (a) => acks.push(a),
                (err: Error) =>
                  acks.push({ ok: false, error: { code: "INTERNAL", message: err.message } }),
              );
          }
        }
        await eventually(
          async () => expect(await waitingReads(admin, database)).toBeGreaterThanOrEqual(PER_USER),
          20_000,
        );
        // The pool still has room: the bystander is answered while the attacker is stuck.
        for (let i = 0; i < 3; i++) during.push(await timed(bystander));
        // Those refused are answered at once, while the lock is still held.
        await eventually(() => expect(acks.length).toBe(total - admitted), 20_000);
        expect(await waitingReads(admin, database)).toBe(PER_USER);
      });
      await eventually(() => expect(acks).toHaveLength(total), 20_000);
      const refused = acks.filter((a): a is Extract<Ack<unknown>, { ok: false }> => !a.ok);
      expect(acks.filter((a) => a.ok)).toHaveLength(admitted);
      expect(refused).toHaveLength(total - admitted);
      for (const r of refused) {
        expect(r.error.code).toBe("RATE_LIMITED");
        expect(r.error.message).toContain("for this user");
        expect(r.error.retryAfterMs).toBeGreaterThan(0);
      }
      for (const s of sockets) expect(s.connected).toBe(true);
      const before = percentiles(baseline).median;
      const flooded = percentiles(during).median;
      console.log(
        `[fairness] bystander chat:list median ${before} ms before, ${flooded} ms while ${total} page reads of one user were stuck (${PER_USER} in the database)`,
      );
    } finally {
      await locker.end({ timeout: 5 });
      await admin.end({ timeout: 5 });
    }
  }, 90_000);
});

describe("UserPageGates", () => {
  test("keeps an entry only while the user has page commands running or waiting", async () => {
    const gates = new UserPageGates(1, 1);
    const signal = new AbortController().signal;
    await gates.acquire("a", signal);
    const second = gates.acquire("a", signal);
    await expect(gates.acquire("a", signal)).rejects.toMatchObject({ code: "RATE_LIMITED" });
    await gates.acquire("b", signal);
    expect(gates.size).toBe(2);
    gates.release("b");
    expect(gates.size).toBe(1);
    gates.release("a");
    await second;
    expect(gates.size).toBe(1);
    gates.release("a");
    expect(gates.size).toBe(0);
    // A waiting command whose signal aborts leaves nothing behind either.
    const aborting = new AbortController();
    await gates.acquire("c", signal);
    const waiting = gates.acquire("c", aborting.signal);
    aborting.abort(new Error("gone"));
    await expect(waiting).rejects.toThrow("gone");
    gates.release("c");
    expect(gates.size).toBe(0);
  });
});

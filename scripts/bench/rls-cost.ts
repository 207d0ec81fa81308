/**
 * `npm run bench:rls -- [--concurrency 30] [--seconds 3] [--rounds 3]`
 *
 * What running the server's user-scoped queries under row-level security would cost, measured
 * against the same queries as the server runs them today (docs/security.md, "Row-level
 * security on the server's path"). Two operations, each in two modes, interleaved round by
 * round so that a noisy machine hits both modes alike:
 *
 * - write: the message transaction (INSERT into chat_memory; the triggers assign seq and
 *   update last_message, updated_at and message_count), one per message;
 * - read: the latest page of 50 messages of a chat (chat:open, message:history).
 *
 * "plain" is one autocommitted statement on the table owner's connection, as the server runs
 * it. "rls" is what PostgREST does per request: a transaction that switches to the role
 * `authenticated` and sets `request.jwt.claims` with parameters (`set_config`, never
 * string-built SQL), then runs the same statement under the policies. The two statements of
 * the transaction are pipelined. Prints each round, then medians and the ratio rls / plain.
 * Loopback Postgres only; every loop is bounded by time and count.
 */
import { randomBytes } from "node:crypto";
import { parseArgs } from "node:util";
import postgres from "postgres";
import { runMigrations } from "../../server/src/db/migrate.js";
import { median, nowMs, round } from "../loadtest/stats.js";
import { loopbackDatabaseUrl } from "./loopback.js";

const { values: args } = parseArgs({
  options: {
    concurrency: { type: "string", default: "30" },
    seconds: { type: "string", default: "3" },
    rounds: { type: "string", default: "3" },
    "database-url": { type: "string" },
  },
});
const concurrency = Math.min(500, Math.max(1, Number(args.concurrency)));
const seconds = Math.min(60, Math.max(1, Number(args.seconds)));
const rounds = Math.min(15, Math.max(1, Number(args.rounds)));
const adminUrl = loopbackDatabaseUrl(args["database-url"]);
const POOL_SIZE = 20;
const PAGE = 50;

type Mode = "plain" | "rls";
type Operation = "write" | "read";

async function main() {
  const admin = postgres(adminUrl, { max: 1, onnotice: () => {} });
  const dbName = `bench_rls_${Date.now()}_${randomBytes(3).toString("hex")}`;
  const url = new URL(adminUrl);
  url.pathname = `/${dbName}`;
  await admin.unsafe(`create database "${dbName}"`);
  const sql = postgres(url.toString(), { max: POOL_SIZE, onnotice: () => {} });
  try {
    await runMigrations(url.toString());
    // One user and one chat per concurrent writer, each chat with a page's worth of history.
    await sql`
      insert into users (clerk_id) select 'bench_' || g from generate_series(1, ${concurrency}) g`;
    const chats = await sql<{ id: string; clerk_id: string }[]>`
      insert into chat_sessions (user_id, title)
      select id, clerk_id from users
      returning id, title as clerk_id`;
    await sql`
      insert into chat_memory (session_id, client_id, message)
      select c.id, 'seed-' || g, jsonb_build_object('role', 'user', 'content', 'history ' || g)
        from chat_sessions c, generate_series(1, ${PAGE}) g`;

    let sequence = 0;
    const statement = (
      op: Operation,
      tx: postgres.Sql | postgres.TransactionSql,
      chatId: string,
    ) =>
      op === "write"
        ? tx`insert into chat_memory (session_id, client_id, message)
             values (${chatId}, ${`w-${sequence++}`}, ${tx.json({ role: "user", content: "benchmark" })})`
        : tx`select * from chat_memory where session_id = ${chatId} order by seq desc limit ${PAGE}`;

    async function measure(op: Operation, mode: Mode): Promise<number> {
      let done = 0;
      const started = nowMs();
      const deadline = started + seconds * 1000;
      await Promise.all(
        chats.map(async (chat) => {
          const claims = JSON.stringify({ sub: chat.clerk_id, role: "authenticated" });
          for (let k = 0; k < 1_000_000 && nowMs() < deadline; k++) {
            if (mode === "plain") {
              await statement(op, sql, chat.id);
            } else {
              await sql.begin((tx) => [
                tx`select set_config('role', 'authenticated', true),
                          set_config('request.jwt.claims', ${claims}, true)`,
                statement(op, tx, chat.id),
              ]);
            }
            done++;
          }
        }),
      );
      return (done / (nowMs() - started)) * 1000;
    }

    // Under RLS the read must still see the page and the write must still land: a mode that
    // failed silently would look fast.
    const [probe] = chats;
    if (!probe) throw new Error("no chat");
    const visible = await sql.begin((tx) => [
      tx`select set_config('role', 'authenticated', true),
                set_config('request.jwt.claims', ${JSON.stringify({ sub: probe.clerk_id, role: "authenticated" })}, true)`,
      statement("read", tx, probe.id),
    ]);
    if ((visible[1] as unknown[]).length !== PAGE) throw new Error("RLS read saw the wrong rows");

    console.log(
      `RLS cost: ${concurrency} concurrent callers, pool ${POOL_SIZE}, ${seconds} s per measurement, ${rounds} rounds`,
    );
    const results: Record<`${Operation}:${Mode}`, number[]> = {
      "write:plain": [],
      "write:rls": [],
      "read:plain": [],
      "read:rls": [],
    };
    for (let r = 1; r <= rounds; r++) {
      const line: string[] = [];
      for (const op of ["write", "read"] as const) {
        // Alternate which mode goes first, so neither always gets the warmer cache.
        const order: Mode[] = r % 2 ? ["plain", "rls"] : ["rls", "plain"];
        for (const mode of order) {
          const perSecond = await measure(op, mode);
          results[`${op}:${mode}`].push(perSecond);
          line.push(`${op}/${mode} ${Math.round(perSecond)}/s`);
        }
      }
      console.log(`  round ${r}: ${line.join("  ")}`);
    }
    console.log("\noperation  plain/s (median)  rls/s (median)  rls / plain");
    const summary: Record<string, unknown> = { concurrency, seconds, rounds };
    for (const op of ["write", "read"] as const) {
      const plain = median(results[`${op}:plain`]);
      const rls = median(results[`${op}:rls`]);
      summary[op] = { plain: Math.round(plain), rls: Math.round(rls), ratio: round(rls / plain) };
      console.log(
        `${op.padEnd(10)} ${String(Math.round(plain)).padEnd(17)} ${String(Math.round(rls)).padEnd(15)} ${round(rls / plain)}×`,
      );
    }
    console.log(`\nJSON: ${JSON.stringify(summary)}`);
  } finally {
    await sql.end({ timeout: 5 });
    await admin.unsafe(`drop database if exists "${dbName}" with (force)`).catch(() => {});
    await admin.end();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});

/**
 * The database ceiling: the product's message transaction (one INSERT into chat_memory, whose
 * triggers assign seq and update last_message, updated_at and message_count), driven directly
 * through postgres.js, one transaction per message (a single autocommitted statement, as the
 * product's unbatched path is), at a given concurrency over a pool as large as the server's.
 */
import postgres from "postgres";
import { nowMs } from "./stats.js";

export async function measureDatabaseCeiling(
  databaseUrl: string,
  concurrency: number,
  durationMs: number,
  poolSize: number,
): Promise<{ messages: number; ms: number; perSecond: number }> {
  const sql = postgres(databaseUrl, { max: poolSize, onnotice: () => {} });
  try {
    const [user] = await sql<{ id: string }[]>`
      insert into users (clerk_id) values (${`baseline_${Date.now()}`}) returning id`;
    // One chat per concurrent writer, as in the product run (each sender writes its own chats).
    const chats = await sql<{ id: string }[]>`
      insert into chat_sessions (user_id, title)
      select ${user?.id ?? ""}, 'baseline ' || g from generate_series(1, ${concurrency}) g returning id`;
    let messages = 0;
    const started = nowMs();
    const deadline = started + durationMs;
    await Promise.all(
      chats.map(async ({ id }, w) => {
        for (let k = 0; k < 1_000_000 && nowMs() < deadline; k++) {
          await sql`
            insert into chat_memory (session_id, client_id, message)
            values (${id}, ${`b-${w}-${k}`}, ${sql.json({ role: "user", content: `baseline ${k}` })})`;
          messages++;
        }
      }),
    );
    const ms = nowMs() - started;
    return { messages, ms, perSecond: (messages / ms) * 1000 };
  } finally {
    await sql.end({ timeout: 5 });
  }
}

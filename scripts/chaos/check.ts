/**
 * The chaos check: what the database holds, and how a live SDK device differs from it. A
 * device equals the database when its sidebar lists the user's chats in the server's order
 * (`updated_at` desc, `id` desc) with the stored titles, `lastSeq` and last message, and every
 * chat it has open holds the stored messages from its first loaded one to the last, with
 * nothing pending or streaming.
 */
import type postgres from "postgres";
import type { ChatClient } from "../../client-sdk/src/index.js";

export interface StoredMessage {
  seq: number;
  clientId: string;
  role: string;
  content: string;
}

export interface StoredChat {
  id: string;
  userId: string;
  title: string;
  lastSeq: number;
  lastMessage: { role: string; content: string } | null;
  /** `updated_at` with its microseconds (ISO 8601), shown in order diffs. */
  updatedAt: string;
  messages: StoredMessage[];
}

export interface DatabaseState {
  chats: Map<string, StoredChat>;
  /** Clerk user id -> the user's chat ids in sidebar order. */
  sidebars: Map<string, string[]>;
}

export async function readDatabase(sql: postgres.Sql): Promise<DatabaseState> {
  // One snapshot for both reads.
  return sql.begin("isolation level repeatable read read only", async (tx) => {
    const chats = await tx<
      {
        id: string;
        clerk_id: string;
        title: string;
        updated_at: string;
        last_seq: number;
        last_message: { role: string; content: string } | null;
      }[]
    >`
      select c.id::text, u.clerk_id, c.title, c.last_seq::int, c.last_message,
             to_char(c.updated_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as updated_at
        from chat_sessions c join users u on u.id = c.user_id
       order by u.clerk_id, c.updated_at desc, c.id desc`;
    const messages = await tx<(StoredMessage & { chat_id: string })[]>`
      select session_id::text as chat_id, seq::int, client_id as "clientId",
             message->>'role' as role, message->>'content' as content
        from chat_memory order by session_id, seq`;
    const state: DatabaseState = { chats: new Map(), sidebars: new Map() };
    for (const c of chats) {
      state.chats.set(c.id, {
        id: c.id,
        userId: c.clerk_id,
        title: c.title,
        updatedAt: c.updated_at,
        lastSeq: c.last_seq,
        lastMessage: c.last_message
          ? { role: c.last_message.role, content: c.last_message.content }
          : null,
        messages: [],
      });
      state.sidebars.set(c.clerk_id, [...(state.sidebars.get(c.clerk_id) ?? []), c.id]);
    }
    for (const { chat_id, ...m } of messages) state.chats.get(chat_id)?.messages.push(m);
    return state;
  }) as Promise<DatabaseState>;
}

const short = (id: string) => id.slice(0, 8);

/** Every way `client` (of `userId`) differs from the database; empty when it equals it. */
export function diffDevice(
  name: string,
  userId: string,
  client: ChatClient,
  open: ReadonlySet<string>,
  db: DatabaseState,
): string[] {
  const out: string[] = [];
  const sidebar = client.sidebar.getSnapshot();
  const expected = db.sidebars.get(userId) ?? [];
  const actual = sidebar.chats.map((c) => c.id);
  if (sidebar.status !== "ready") out.push(`${name} sidebar: status ${sidebar.status}`);
  const missing = expected.filter((id) => !actual.includes(id));
  const extra = actual.filter((id) => !expected.includes(id));
  if (missing.length) out.push(`${name} sidebar: missing chats ${missing.map(short).join(", ")}`);
  if (extra.length) {
    out.push(
      `${name} sidebar: shows chats not in the database (deleted) ${extra.map(short).join(", ")}`,
    );
  }
  if (!missing.length && !extra.length && expected.join() !== actual.join()) {
    const shown = new Map(sidebar.chats.map((c) => [c.id, c.updatedAt]));
    out.push(
      `${name} sidebar: order [${actual.map((id) => `${short(id)}@${shown.get(id)}`).join(" ")}], database [${expected.map((id) => `${short(id)}@${db.chats.get(id)?.updatedAt}`).join(" ")}]`,
    );
  }
  for (const c of sidebar.chats) {
    const s = db.chats.get(c.id);
    if (!s) continue;
    if (c.title !== s.title) {
      out.push(
        `${name} sidebar ${short(c.id)}: title ${JSON.stringify(c.title)}, database ${JSON.stringify(s.title)}`,
      );
    }
    if (c.lastSeq !== s.lastSeq) {
      out.push(`${name} sidebar ${short(c.id)}: lastSeq ${c.lastSeq}, database ${s.lastSeq}`);
    }
    const lm = c.lastMessage ? `${c.lastMessage.role}:${c.lastMessage.content}` : null;
    const slm = s.lastMessage ? `${s.lastMessage.role}:${s.lastMessage.content}` : null;
    if (lm !== slm) {
      out.push(
        `${name} sidebar ${short(c.id)}: last message ${JSON.stringify(lm)}, database ${JSON.stringify(slm)}`,
      );
    }
  }
  for (const chatId of open) {
    const snap = client.chat(chatId).getSnapshot();
    const s = db.chats.get(chatId);
    const where = `${name} chat ${short(chatId)}`;
    if (!s) {
      if (snap.status !== "deleted")
        out.push(`${where}: deleted in the database, status ${snap.status}`);
      continue;
    }
    if (snap.status !== "ready" || !snap.open) {
      out.push(`${where}: status ${snap.status}, open ${snap.open}`);
      continue;
    }
    const first = snap.messages[0]?.seq ?? 1;
    const want = s.messages.filter((m) => m.seq >= first);
    const have = snap.messages;
    const key = (m: StoredMessage) => `${m.seq}|${m.clientId}|${m.role}|${m.content}`;
    const n = Math.max(want.length, have.length);
    for (let i = 0; i < n; i++) {
      const w = want[i];
      const h = have[i];
      if (w && h && key(w) === key(h)) continue;
      out.push(
        `${where}: from position ${i} (seq ${w?.seq ?? h?.seq}) device has ${have.length - i} more [${have
          .slice(i, i + 3)
          .map(key)
          .join("; ")}], database ${want.length - i} more [${want
          .slice(i, i + 3)
          .map(key)
          .join(
            "; ",
          )}] (device seqs ${have[0]?.seq ?? "-"}..${have.at(-1)?.seq ?? "-"}, database 1..${s.lastSeq})`,
      );
      break;
    }
    if (snap.messages.length === 0 && snap.hasMoreBefore)
      out.push(`${where}: empty but hasMoreBefore`);
    if (snap.pending.length) out.push(`${where}: ${snap.pending.length} pending`);
    const streaming = snap.streams.filter((r) => r.status === "streaming");
    if (streaming.length) {
      out.push(
        `${where}: still streaming ${streaming.map((r) => r.streamId).join(", ")} (all were finished)`,
      );
    }
  }
  return out;
}

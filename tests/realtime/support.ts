/**
 * Small helpers shared by the realtime tests: typed command calls that unwrap acks, waiting for
 * one server event, raw Socket.IO frames through the client's own engine, unique user ids and a
 * direct Postgres handle for assertions on what was (not) stored.
 */
import { randomBytes } from "node:crypto";
import postgres from "postgres";
import type { Socket } from "socket.io-client";
import { expect } from "vitest";
import type {
  Ack,
  CommandInput,
  CommandName,
  CommandResults,
  ProtocolError,
  ServerToClientEvents,
} from "../../protocol/index.js";
import type { ClientSocket } from "../helpers/server.js";

/** Longest wait for one ack; a lost ack fails the test instead of hanging it. */
export const ACK_TIMEOUT_MS = 15_000;

/** The socket without the protocol's typing, for sending what the protocol forbids. */
export function untyped(s: ClientSocket): Socket {
  return s as unknown as Socket;
}

/** Sends a command (any payload) and returns its ack as received. */
export async function command<C extends CommandName>(
  s: ClientSocket,
  name: C,
  payload: unknown,
): Promise<Ack<CommandResults[C]>> {
  return (await untyped(s).timeout(ACK_TIMEOUT_MS).emitWithAck(name, payload)) as Ack<
    CommandResults[C]
  >;
}

/** Sends a command and returns its data; fails the test with the error when the ack is not ok. */
export async function ok<C extends CommandName>(
  s: ClientSocket,
  name: C,
  payload: CommandInput<C>,
): Promise<CommandResults[C]> {
  const ack = await command(s, name, payload);
  if (!ack.ok) {
    throw new Error(`${name} was refused: ${JSON.stringify(ack.error)}`);
  }
  expect(Object.keys(ack).sort()).toEqual(["data", "ok"]);
  return ack.data;
}

/** Sends a command that must be refused and returns the error (checked to be well formed). */
export async function refused(
  s: ClientSocket,
  name: string,
  payload: unknown,
): Promise<ProtocolError> {
  const ack = (await untyped(s).timeout(ACK_TIMEOUT_MS).emitWithAck(name, payload)) as Ack<unknown>;
  if (ack.ok) throw new Error(`${name} succeeded but should not have: ${JSON.stringify(ack)}`);
  expect(Object.keys(ack).sort()).toEqual(["error", "ok"]);
  expect(typeof ack.error.code).toBe("string");
  expect(typeof ack.error.message).toBe("string");
  expect(ack.error.message.length).toBeGreaterThan(0);
  return ack.error;
}

type EventPayload<E extends keyof ServerToClientEvents> = Parameters<ServerToClientEvents[E]>[0];

/** Resolves with the next `event` whose payload satisfies `match`; rejects after `timeoutMs`. */
export function nextEvent<E extends keyof ServerToClientEvents>(
  s: ClientSocket,
  event: E,
  match: (payload: EventPayload<E>) => boolean = () => true,
  timeoutMs = 10_000,
): Promise<EventPayload<E>> {
  const raw = untyped(s);
  return new Promise((resolve, reject) => {
    const listener = (...args: unknown[]) => {
      const payload = args[0] as EventPayload<E>;
      if (!match(payload)) return;
      clearTimeout(timer);
      raw.off(event as string, listener);
      resolve(payload);
    };
    const timer = setTimeout(() => {
      raw.off(event as string, listener);
      reject(new Error(`no ${event} within ${timeoutMs} ms`));
    }, timeoutMs);
    raw.on(event as string, listener);
  });
}

/** Resolves with the disconnect reason of `s`; rejects after `timeoutMs`. */
export function disconnected(s: ClientSocket, timeoutMs = 10_000): Promise<string> {
  return new Promise((resolve, reject) => {
    if (s.disconnected && !s.active) {
      resolve("already disconnected");
      return;
    }
    const timer = setTimeout(
      () => reject(new Error(`still connected after ${timeoutMs} ms`)),
      timeoutMs,
    );
    s.once("disconnect", (reason) => {
      clearTimeout(timer);
      resolve(reason);
    });
  });
}

/**
 * Writes one raw Socket.IO packet (the text after the Engine.IO "message" type) on the client's
 * own connection, e.g. `2917["chat:list",{}]`: an EVENT with ack id 917. Used for frames the
 * client library refuses to build. Acks with ids the client did not allocate are ignored by it,
 * so `rawAck` listens for them on the engine.
 */
export function rawSend(s: ClientSocket, packet: string): void {
  s.io.engine.send(packet);
}

/** Resolves with the payload of the ACK packet carrying `id`. */
export function rawAck(s: ClientSocket, id: number, timeoutMs = 10_000): Promise<unknown> {
  const engine = s.io.engine;
  const prefix = `3${id}[`;
  return new Promise((resolve, reject) => {
    const listener = (data: unknown) => {
      if (typeof data !== "string" || !data.startsWith(prefix)) return;
      clearTimeout(timer);
      engine.off("data", listener);
      const args = JSON.parse(data.slice(prefix.length - 1)) as unknown[];
      resolve(args[0]);
    };
    const timer = setTimeout(() => {
      engine.off("data", listener);
      reject(new Error(`no ack ${id} within ${timeoutMs} ms`));
    }, timeoutMs);
    engine.on("data", listener);
  });
}

/** A Clerk-looking user id, unique per call. */
export function userId(label: string): string {
  return `user_${label}_${randomBytes(6).toString("hex")}`;
}

/** A direct connection to the server's database for assertions. */
export function openSql(url: string): postgres.Sql {
  return postgres(url, { max: 2, onnotice: () => {}, connect_timeout: 10 });
}

/** The claims of a JWT, without verifying it. */
export function claimsOf(token: string): Record<string, unknown> & { exp: number } {
  const part = token.split(".")[1];
  if (!part) throw new Error("not a JWT");
  return JSON.parse(Buffer.from(part, "base64url").toString("utf8"));
}

/** Row counts and counters of one user, straight from the tables. */
export async function userState(sql: postgres.Sql, clerkId: string) {
  const [row] = await sql<
    {
      id: string;
      message_count: number;
      total_conversations: number;
      chats: number;
      messages: number;
    }[]
  >`
    select u.id, u.message_count, u.total_conversations,
           (select count(*)::int from chat_sessions c where c.user_id = u.id) as chats,
           (select count(*)::int from chat_memory m join chat_sessions c on c.id = m.session_id
             where c.user_id = u.id) as messages
      from users u where u.clerk_id = ${clerkId}`;
  return row;
}

/** One chat's row and its messages' shape, straight from the tables. */
export async function chatState(sql: postgres.Sql, chatId: string) {
  const [row] = await sql<
    {
      title: string;
      last_seq: number;
      last_message: unknown;
      updated_us: string;
      messages: number;
      max_seq: number;
    }[]
  >`
    select c.title, c.last_seq::int as last_seq, c.last_message,
           (extract(epoch from c.updated_at) * 1000000)::bigint::text as updated_us,
           (select count(*)::int from chat_memory m where m.session_id = c.id) as messages,
           (select coalesce(max(seq), 0)::int from chat_memory m where m.session_id = c.id) as max_seq
      from chat_sessions c where c.id = ${chatId}`;
  return row;
}

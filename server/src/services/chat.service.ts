import {
  type ChatSummary,
  type CommandResults,
  ErrorCode,
  type GeneratingState,
  Limits,
  type StreamSnapshot,
} from "../../../protocol/index.js";
import { mayHaveCommitted } from "../db/errors.js";
import type { Logger } from "../logger.js";
import type { CommandPayload } from "../protocol-schemas.js";
import type { ChatRepository, SidebarCursor } from "../repositories/chat.repository.js";
import type { MessageRepository } from "../repositories/message.repository.js";
import type { StreamStore } from "../repositories/stream.repository.js";
import type { Actor } from "./actor.js";
import { AppError, notFound } from "./errors.js";
import { toChatMessage, toChatSummary } from "./mappers.js";
import type { Notifier } from "./notifier.js";
import type { RateLimits } from "./rate-limits.js";

/** What the chat service reads of streamed replies: snapshots and the sidebar's spinner. */
export type StreamReads = Pick<StreamStore, "openStreams" | "generating">;

/** No streams (tests and tools that build a ChatService without a stream store). */
const noStreams: StreamReads = {
  openStreams: async () => [],
  generating: async () => new Map(),
};

/**
 * Chats: the sidebar, and opening a chat. Every operation is scoped to the actor's own chats,
 * and every write (create, rename, delete) is rate-limited per user, by tier.
 */
export class ChatService {
  constructor(
    private readonly chats: ChatRepository,
    private readonly messages: MessageRepository,
    private readonly notifier: Notifier,
    private readonly rateLimits: RateLimits,
    private readonly streams: StreamReads = noStreams,
    private readonly logger?: Logger,
  ) {}

  /** A page of the sidebar, bounded by count and by bytes (Limits.MAX_PAGE_BYTES). */
  async list(
    actor: Actor,
    input: CommandPayload<"chat:list">,
    signal?: AbortSignal,
  ): Promise<CommandResults["chat:list"]> {
    const limit = input.limit ?? Limits.DEFAULT_PAGE_SIZE;
    const after = input.cursor === undefined ? undefined : decodeCursor(input.cursor);
    const { rows, hasMore } = await this.chats.list(actor.dbUserId, limit, after, { signal });
    const last = rows.at(-1);
    const generating = await this.generating(rows.map((r) => r.id));
    return {
      chats: rows.map((r) => ({ ...toChatSummary(r), generating: generating.get(r.id) ?? null })),
      nextCursor: hasMore && last ? encodeCursor(last) : null,
    };
  }

  async create(actor: Actor, input: CommandPayload<"chat:create">): Promise<ChatSummary> {
    await this.rateLimits.consumeWrite(actor, "chatCreate");
    const inserted = await this.unsure(actor, () => this.chats.insert(actor.dbUserId, input));
    // Deleted (webhook) while this socket was still connected: as if it came after the close.
    if (inserted === "userMissing") throw notFound("User");
    if (inserted === "exists") {
      // A retried create with the same client-chosen id: return the chat if it is the actor's.
      const existing = input.id ? await this.chats.find(actor.dbUserId, input.id) : undefined;
      if (!existing) throw new AppError(ErrorCode.CONFLICT, "A chat with this id already exists");
      const generating = await this.generating([existing.id]);
      return { ...toChatSummary(existing), generating: generating.get(existing.id) ?? null };
    }
    // A new chat has no reply in progress.
    const chat: ChatSummary = { ...toChatSummary(inserted), generating: null };
    this.notifier.chatCreated(actor.userId, chat);
    this.notifier.statsChanged(actor.userId);
    return chat;
  }

  async rename(actor: Actor, input: CommandPayload<"chat:rename">): Promise<ChatSummary> {
    await this.rateLimits.consumeWrite(actor, "chatEdit");
    const row = await this.unsure(actor, () =>
      this.chats.rename(actor.dbUserId, input.chatId, input.title),
    );
    if (!row) throw notFound();
    const chat = toChatSummary(row);
    this.notifier.chatUpdated(actor.userId, chat);
    return chat;
  }

  async delete(actor: Actor, input: CommandPayload<"chat:delete">): Promise<{ chatId: string }> {
    await this.rateLimits.consumeWrite(actor, "chatEdit");
    const deleted = await this.unsure(actor, () => this.chats.delete(actor.dbUserId, input.chatId));
    if (!deleted) throw notFound();
    this.notifier.chatDeleted(actor.userId, input.chatId);
    return { chatId: input.chatId };
  }

  /**
   * Runs a write. When it fails in a way that may have committed (the connection broke with
   * the answer in it), the retry finds the change made (a create answers the existing chat, a
   * delete NOT_FOUND) and broadcasts nothing, so the user's devices are told to resynchronise
   * instead, as after a send (MessageService.write).
   */
  private async unsure<T>(actor: Actor, write: () => Promise<T>): Promise<T> {
    try {
      return await write();
    } catch (err) {
      if (mayHaveCommitted(err)) this.notifier.resyncUser(actor.userId);
      throw err;
    }
  }

  /**
   * Opens a chat: checks ownership, then calls `join` (the socket joins the chat's room), then
   * reads the latest page and the replies streaming in it. Joining before reading means no
   * message and no streamed text can fall between what is read and the live events; some may
   * arrive in both, and clients drop them by `seq` and by delta `offset`.
   */
  async open(
    actor: Actor,
    input: CommandPayload<"chat:open">,
    join: () => void | Promise<void>,
    signal?: AbortSignal,
  ): Promise<CommandResults["chat:open"]> {
    await this.requireOwned(actor, input.chatId);
    // Joined (and, across nodes, receiving the room's broadcasts) before the snapshot is read.
    await join();
    const [{ rows, hasMore }, streams] = await Promise.all([
      this.messages.page(
        actor.dbUserId,
        input.chatId,
        input.limit ?? Limits.DEFAULT_PAGE_SIZE,
        {},
        { signal },
      ),
      this.snapshots(input.chatId),
    ]);
    // Re-read the chat after the page so `lastSeq` is at least the page's last seq.
    const chat = await this.requireOwned(actor, input.chatId);
    const latest = streams.at(-1);
    return {
      chat: {
        ...chat,
        generating: latest ? { streamId: latest.streamId, startedAt: latest.startedAt } : null,
      },
      messages: rows.map(toChatMessage),
      hasMore,
      streams,
    };
  }

  /**
   * The chat's replies in progress. Stream state lives in Redis with several nodes: while it is
   * unavailable a chat still opens, without them (its stream calls fail meanwhile too).
   */
  private async snapshots(chatId: string): Promise<StreamSnapshot[]> {
    try {
      return (await this.streams.openStreams(chatId)).map((r) => ({
        streamId: r.streamId,
        chatId: r.chatId,
        role: r.role,
        startedAt: new Date(r.startedAt).toISOString(),
        content: r.content,
        nextIndex: r.nextIndex,
      }));
    } catch (err) {
      this.logger?.warn({ chatId, err: String(err) }, "stream state unavailable for chat:open");
      return [];
    }
  }

  /** Generating state of a page of chats (none while the stream state is unavailable). */
  private async generating(chatIds: string[]): Promise<Map<string, GeneratingState>> {
    const out = new Map<string, GeneratingState>();
    try {
      for (const [id, g] of await this.streams.generating(chatIds)) {
        out.set(id, { streamId: g.streamId, startedAt: new Date(g.startedAt).toISOString() });
      }
    } catch (err) {
      this.logger?.warn({ err: String(err) }, "stream state unavailable for chat:list");
    }
    return out;
  }

  /** The chat, if it is the actor's; NOT_FOUND otherwise (another user's chat is not revealed). */
  async requireOwned(actor: Actor, chatId: string): Promise<ChatSummary> {
    const row = await this.chats.find(actor.dbUserId, chatId);
    if (!row) throw notFound();
    return toChatSummary(row);
  }
}

function encodeCursor(row: { updatedUs: string; id: string }): string {
  return Buffer.from(`${row.updatedUs}.${row.id}`).toString("base64url");
}

function decodeCursor(cursor: string): SidebarCursor {
  const [updatedUs, id] = Buffer.from(cursor, "base64url").toString().split(".");
  if (
    !updatedUs ||
    !id ||
    // Microseconds since 1970: 17 digits reach the year 5138, well inside Postgres' range.
    !/^\d{1,17}$/.test(updatedUs) ||
    !/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(id)
  ) {
    throw new AppError(ErrorCode.INVALID_PAYLOAD, "cursor is not one this server issued", {
      details: [{ path: "cursor", message: "invalid cursor" }],
    });
  }
  return { updatedUs, id };
}

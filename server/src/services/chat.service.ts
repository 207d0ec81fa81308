import {
  type ChatSummary,
  type CommandPayload,
  type CommandResults,
  ErrorCode,
  Limits,
} from "../../../protocol/index.js";
import type { ChatRepository, SidebarCursor } from "../repositories/chat.repository.js";
import type { MessageRepository } from "../repositories/message.repository.js";
import type { Actor } from "./actor.js";
import { AppError, notFound } from "./errors.js";
import { toChatMessage, toChatSummary } from "./mappers.js";
import type { Notifier } from "./notifier.js";
import type { RateLimits } from "./rate-limits.js";

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
    return {
      chats: rows.map(toChatSummary),
      nextCursor: hasMore && last ? encodeCursor(last) : null,
    };
  }

  async create(actor: Actor, input: CommandPayload<"chat:create">): Promise<ChatSummary> {
    await this.rateLimits.consumeWrite(actor, "chatCreate");
    const inserted = await this.chats.insert(actor.dbUserId, input);
    if (!inserted) {
      // A retried create with the same client-chosen id: return the chat if it is the actor's.
      const existing = input.id ? await this.chats.find(actor.dbUserId, input.id) : undefined;
      if (!existing) throw new AppError(ErrorCode.CONFLICT, "A chat with this id already exists");
      return toChatSummary(existing);
    }
    const chat = toChatSummary(inserted);
    this.notifier.chatCreated(actor.userId, chat);
    this.notifier.statsChanged(actor.userId);
    return chat;
  }

  async rename(actor: Actor, input: CommandPayload<"chat:rename">): Promise<ChatSummary> {
    await this.rateLimits.consumeWrite(actor, "chatEdit");
    const row = await this.chats.rename(actor.dbUserId, input.chatId, input.title);
    if (!row) throw notFound();
    const chat = toChatSummary(row);
    this.notifier.chatUpdated(actor.userId, chat);
    return chat;
  }

  async delete(actor: Actor, input: CommandPayload<"chat:delete">): Promise<{ chatId: string }> {
    await this.rateLimits.consumeWrite(actor, "chatEdit");
    if (!(await this.chats.delete(actor.dbUserId, input.chatId))) throw notFound();
    this.notifier.chatDeleted(actor.userId, input.chatId);
    return { chatId: input.chatId };
  }

  /**
   * Opens a chat: checks ownership, then calls `join` (the socket joins the chat's room), then
   * reads the latest page. Joining before reading means no message can fall between the page
   * and the live stream; one may arrive in both, and clients drop it by `seq`.
   */
  async open(
    actor: Actor,
    input: CommandPayload<"chat:open">,
    join: () => void,
    signal?: AbortSignal,
  ): Promise<CommandResults["chat:open"]> {
    await this.requireOwned(actor, input.chatId);
    join();
    const { rows, hasMore } = await this.messages.page(
      actor.dbUserId,
      input.chatId,
      input.limit ?? Limits.DEFAULT_PAGE_SIZE,
      {},
      { signal },
    );
    // Re-read the chat after the page so `lastSeq` is at least the page's last seq.
    const chat = await this.requireOwned(actor, input.chatId);
    // TODO(assistant loop): the replies streaming in this chat (StreamSnapshot).
    return { chat, messages: rows.map(toChatMessage), hasMore, streams: [] };
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

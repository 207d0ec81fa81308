import {
  type CommandPayload,
  type CommandResults,
  ErrorCode,
  Limits,
  type MessageBody,
} from "../../../protocol/index.js";
import type { MessageRepository } from "../repositories/message.repository.js";
import type { Actor } from "./actor.js";
import type { ChatService } from "./chat.service.js";
import { AppError, notFound } from "./errors.js";
import { KeyedQueue } from "./keyed-queue.js";
import { toChatMessage, toMessageBody } from "./mappers.js";
import type { Notifier } from "./notifier.js";
import type { RateLimits } from "./rate-limits.js";

/** Messages: storing them exactly once, and reading them in their one order. */
export class MessageService {
  private readonly perChat = new KeyedQueue();

  constructor(
    private readonly messages: MessageRepository,
    private readonly chats: ChatService,
    private readonly notifier: Notifier,
    private readonly rateLimits: RateLimits,
  ) {}

  /**
   * Stores a message (once per clientId in the chat) and broadcasts it: the message to the
   * chat's room, the new sidebar entry and the stats to the user's devices. A retry of a
   * stored clientId returns the stored row and broadcasts nothing. Used by socket sends
   * (role `user`) and by the service API (any role). One chat's messages are stored one at a
   * time on this node, so its broadcasts leave in `seq` order.
   */
  post(
    actor: Actor,
    input: { chatId: string; clientId: string; body: MessageBody },
  ): Promise<CommandResults["message:send"]> {
    return this.perChat.run(input.chatId, () => this.store(actor, input));
  }

  private async store(
    actor: Actor,
    input: { chatId: string; clientId: string; body: MessageBody },
  ): Promise<CommandResults["message:send"]> {
    const stored = await this.messages.insertOnce(
      actor.dbUserId,
      input.chatId,
      input.clientId,
      input.body,
    );
    if (!stored) throw notFound();
    const message = toChatMessage(stored.row);
    if (stored.duplicate) {
      const previous = toMessageBody(stored.row.message);
      if (previous?.content !== input.body.content || previous.role !== input.body.role) {
        throw new AppError(
          ErrorCode.CONFLICT,
          "This clientId was already used for a different message in this chat",
        );
      }
      return { message, duplicate: true };
    }
    this.notifier.messageCreated(actor.userId, message);
    // The triggers set the chat's preview to this message and updated_at to its created_at
    // (one transaction, one now()), so the sidebar entry is known without another query.
    this.notifier.chatUpdated(actor.userId, {
      id: input.chatId,
      title: stored.chat.title,
      lastMessage: input.body,
      lastSeq: message.seq,
      createdAt: stored.chat.createdAt.toISOString(),
      updatedAt: message.createdAt,
    });
    this.notifier.statsChanged(actor.userId);
    return { message, duplicate: false };
  }

  /** A user's own send: rate-limited per user across devices and nodes. */
  async send(actor: Actor, input: CommandPayload<"message:send">) {
    await this.rateLimits.consumeMessage(actor.userId);
    return this.post(actor, {
      chatId: input.chatId,
      clientId: input.clientId,
      body: { role: "user", content: input.content },
    });
  }

  async history(
    actor: Actor,
    input: CommandPayload<"message:history">,
  ): Promise<CommandResults["message:history"]> {
    await this.chats.requireOwned(actor, input.chatId);
    const { rows, hasMore } = await this.messages.page(
      input.chatId,
      input.limit ?? Limits.DEFAULT_PAGE_SIZE,
      { before: input.before, after: input.after },
    );
    return { messages: rows.map(toChatMessage), hasMore };
  }

  /** Everything after `afterSeq`, oldest first, a page at a time (`hasMore`). */
  async sync(
    actor: Actor,
    input: CommandPayload<"message:sync">,
  ): Promise<CommandResults["message:sync"]> {
    await this.chats.requireOwned(actor, input.chatId);
    const { rows, hasMore } = await this.messages.page(
      input.chatId,
      input.limit ?? Limits.MAX_PAGE_SIZE,
      { after: input.afterSeq },
    );
    const messages = rows.map(toChatMessage);
    return { messages, hasMore, lastSeq: messages.at(-1)?.seq ?? input.afterSeq };
  }
}

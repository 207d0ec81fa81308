import {
  type ChatMessage,
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
import { toChatMessage, toMessageBody } from "./mappers.js";
import type { Notifier } from "./notifier.js";
import type { RateLimits } from "./rate-limits.js";

type PostInput = { chatId: string; clientId: string; body: MessageBody };
type PostResult = CommandResults["message:send"];

interface Pending {
  input: PostInput;
  resolve(result: PostResult): void;
  reject(err: unknown): void;
}

/** Most messages stored in one statement. */
const MAX_BATCH = 100;

/** Messages: storing them exactly once, and reading them in their one order. */
export class MessageService {
  /** Sends waiting to be stored, per (user, chat). */
  private readonly queues = new Map<string, Pending[]>();

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
   * (role `user`) and by the service API (any role).
   *
   * Group commit: a node stores one chat's messages one batch at a time. Sends that arrive
   * while a batch is being written wait and go together in the next batch: one statement and
   * one commit for all of them. An ack still means committed, and because batches of a chat
   * never overlap, its broadcasts leave this node in `seq` order.
   */
  post(actor: Actor, input: PostInput): Promise<PostResult> {
    const key = `${actor.dbUserId}:${input.chatId}`;
    return new Promise((resolve, reject) => {
      const queue = this.queues.get(key);
      if (queue) {
        queue.push({ input, resolve, reject });
        return;
      }
      this.queues.set(key, [{ input, resolve, reject }]);
      void this.drain(key, actor, input.chatId);
    });
  }

  private async drain(key: string, actor: Actor, chatId: string): Promise<void> {
    for (;;) {
      const queue = this.queues.get(key) ?? [];
      if (queue.length === 0) {
        this.queues.delete(key);
        return;
      }
      const batch = queue.splice(0, MAX_BATCH);
      try {
        this.settle(actor, chatId, batch, await this.storeBatch(actor, chatId, batch));
      } catch (err) {
        for (const p of batch) p.reject(err);
      }
    }
  }

  private storeBatch(actor: Actor, chatId: string, batch: Pending[]) {
    // The first send of a clientId is the one stored; later ones in the batch are retries.
    const unique = new Map<string, MessageBody>();
    for (const p of batch)
      if (!unique.has(p.input.clientId)) unique.set(p.input.clientId, p.input.body);
    return this.messages.insertBatch(
      actor.dbUserId,
      chatId,
      [...unique].map(([clientId, message]) => ({ clientId, message })),
    );
  }

  private settle(
    actor: Actor,
    chatId: string,
    batch: Pending[],
    stored: Awaited<ReturnType<MessageService["storeBatch"]>>,
  ): void {
    if (!stored) {
      for (const p of batch) p.reject(notFound());
      return;
    }
    const announced = new Set<string>();
    const created: { message: ChatMessage; body: MessageBody }[] = [];
    for (const p of batch) {
      const entry = stored.messages.get(p.input.clientId);
      if (!entry) {
        p.reject(new Error(`batch result lacks clientId ${p.input.clientId}`));
        continue;
      }
      const message = toChatMessage(entry.row);
      const stored_ = toMessageBody(entry.row.message);
      if (stored_?.content !== p.input.body.content || stored_.role !== p.input.body.role) {
        p.reject(
          new AppError(
            ErrorCode.CONFLICT,
            "This clientId was already used for a different message in this chat",
          ),
        );
        continue;
      }
      const first = !entry.duplicate && !announced.has(p.input.clientId);
      announced.add(p.input.clientId);
      if (first) created.push({ message, body: p.input.body });
      p.resolve({ message, duplicate: !first });
    }
    if (created.length === 0) return;
    created.sort((a, b) => a.message.seq - b.message.seq);
    for (const c of created) this.notifier.messageCreated(actor.userId, c.message);
    const last = created.at(-1) as (typeof created)[number];
    // The triggers set the chat's preview to the last message and updated_at to its
    // created_at (one transaction, one now()), so the sidebar entry needs no other query.
    this.notifier.chatUpdated(actor.userId, {
      id: chatId,
      title: stored.chat.title,
      lastMessage: last.body,
      lastSeq: last.message.seq,
      createdAt: stored.chat.createdAt.toISOString(),
      updatedAt: stored.updatedAt ?? last.message.createdAt,
    });
    this.notifier.statsChanged(actor.userId);
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
      actor.dbUserId,
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
      actor.dbUserId,
      input.chatId,
      input.limit ?? Limits.MAX_PAGE_SIZE,
      { after: input.afterSeq },
    );
    const messages = rows.map(toChatMessage);
    return { messages, hasMore, lastSeq: messages.at(-1)?.seq ?? input.afterSeq };
  }
}

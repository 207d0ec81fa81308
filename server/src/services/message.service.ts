import {
  type ChatMessage,
  type CommandResults,
  ErrorCode,
  Limits,
  type MessageBody,
} from "../../../protocol/index.js";
import { mayHaveCommitted } from "../db/errors.js";
import type { MessageJson } from "../db/schema.js";
import type { CommandPayload } from "../protocol-schemas.js";
import type { MessageRepository, StoredBatch } from "../repositories/message.repository.js";
import type { Actor } from "./actor.js";
import type { ChatService } from "./chat.service.js";
import { AppError, notFound } from "./errors.js";
import { toChatMessage, toChatSummary, toMessageBody } from "./mappers.js";
import type { Notifier } from "./notifier.js";
import type { RateLimits } from "./rate-limits.js";

type PostInput = {
  chatId: string;
  clientId: string;
  body: MessageBody;
  /** A streamed reply stopped by the user (stored as `stopped: true` in the message JSON). */
  stopped?: true;
};
type PostResult = CommandResults["message:send"];

interface Pending {
  actor: Actor;
  input: PostInput;
  resolve(result: PostResult): void;
  reject(err: unknown): void;
}

/** Most messages stored in one statement. */
const MAX_BATCH = 200;
/**
 * Batches a node writes at once. Few, so that under load sends queue up and go together
 * (fewer commits); more than one, so that a batch waiting on a lock (a chat being deleted)
 * does not hold up every chat of the node.
 */
const MAX_CONCURRENT_BATCHES = 4;

const chatKey = (p: Pending) => `${p.actor.dbUserId}:${p.input.chatId}`;
const userKey = (p: Pending) => p.actor.dbUserId;

/** Messages: storing them exactly once, and reading them in their one order. */
export class MessageService {
  /** Sends waiting to be stored, in arrival order. */
  private queue: Pending[] = [];
  /**
   * Users with a batch being written: their next sends wait for it. Per user, not per chat:
   * a batch locks its users' rows (message_count) and chats, so two batches of this node
   * never contend for a row, and a chat's batches never overlap.
   */
  private readonly busyUsers = new Set<string>();
  private batchesInFlight = 0;

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
   * Group commit across chats: a node writes at most MAX_CONCURRENT_BATCHES batches at once;
   * sends that arrive meanwhile wait and go together, whatever their chat, in one statement
   * and one commit. An ack still means committed. A user (so each of their chats) is in at
   * most one batch at a time, so a chat's batches never overlap and its broadcasts leave this
   * node in `seq` order.
   */
  post(actor: Actor, input: PostInput): Promise<PostResult> {
    return new Promise((resolve, reject) => {
      this.queue.push({ actor, input, resolve, reject });
      this.pump();
    });
  }

  /** Starts batches while there is room: each takes the waiting sends of users not being written. */
  private pump(): void {
    while (this.batchesInFlight < MAX_CONCURRENT_BATCHES && this.queue.length > 0) {
      const batch: Pending[] = [];
      const rest: Pending[] = [];
      const taken = new Set<string>();
      for (const p of this.queue) {
        const key = userKey(p);
        if (batch.length < MAX_BATCH && !this.busyUsers.has(key)) {
          batch.push(p);
          taken.add(key);
        } else {
          rest.push(p);
        }
      }
      if (batch.length === 0) return; // every waiting user has a batch in flight
      this.queue = rest;
      for (const key of taken) this.busyUsers.add(key);
      this.batchesInFlight++;
      void this.write(batch).finally(() => {
        for (const key of taken) this.busyUsers.delete(key);
        this.batchesInFlight--;
        this.pump();
      });
    }
  }

  /** Writes one batch (one statement) and settles its sends, chat by chat. */
  private async write(batch: Pending[]): Promise<void> {
    const groups = new Map<string, Pending[]>();
    for (const p of batch) {
      const list = groups.get(chatKey(p));
      if (list) list.push(p);
      else groups.set(chatKey(p), [p]);
    }
    const chats = [...groups.values()];
    try {
      const stored = await this.messages.insertMany(
        chats.map((sends) => {
          const first = sends[0] as Pending;
          // The first send of a clientId is the one stored; later ones in the batch are retries.
          const unique = new Map<string, MessageJson>();
          for (const p of sends) {
            if (unique.has(p.input.clientId)) continue;
            const { body, stopped } = p.input;
            unique.set(p.input.clientId, stopped ? { ...body, stopped } : body);
          }
          return {
            userId: first.actor.dbUserId,
            chatId: first.input.chatId,
            items: [...unique].map(([clientId, message]) => ({ clientId, message })),
          };
        }),
      );
      chats.forEach((sends, i) => {
        const first = sends[0] as Pending;
        this.settle(first.actor, sends, stored[i]);
      });
    } catch (err) {
      for (const p of batch) p.reject(err);
      // The batch may have committed with its answer lost: a retry then finds its messages
      // stored (`duplicate: true`) and broadcasts nothing, so the users' other devices are told
      // to resynchronise instead.
      if (mayHaveCommitted(err)) {
        for (const userId of new Set(batch.map((p) => p.actor.userId))) {
          this.notifier.resyncUser(userId);
        }
      }
    }
  }

  private settle(actor: Actor, batch: Pending[], stored: StoredBatch | undefined): void {
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
    // The entry as the batch's commit left it (with its version).
    this.notifier.chatUpdated(actor.userId, toChatSummary(stored.chat));
    this.notifier.statsChanged(actor.userId);
  }

  /** A user's own send: rate-limited per user across devices and nodes, by tier. */
  async send(actor: Actor, input: CommandPayload<"message:send">) {
    await this.rateLimits.consumeWrite(actor, "message");
    return this.post(actor, {
      chatId: input.chatId,
      clientId: input.clientId,
      body: { role: "user", content: input.content },
    });
  }

  async history(
    actor: Actor,
    input: CommandPayload<"message:history">,
    signal?: AbortSignal,
  ): Promise<CommandResults["message:history"]> {
    await this.chats.requireOwned(actor, input.chatId);
    const { rows, hasMore } = await this.messages.page(
      actor.dbUserId,
      input.chatId,
      input.limit ?? Limits.DEFAULT_PAGE_SIZE,
      { before: input.before, after: input.after },
      { signal },
    );
    return { messages: rows.map(toChatMessage), hasMore };
  }

  /** Everything after `afterSeq`, oldest first, a page at a time (`hasMore`). */
  async sync(
    actor: Actor,
    input: CommandPayload<"message:sync">,
    signal?: AbortSignal,
  ): Promise<CommandResults["message:sync"]> {
    await this.chats.requireOwned(actor, input.chatId);
    const { rows, hasMore } = await this.messages.page(
      actor.dbUserId,
      input.chatId,
      input.limit ?? Limits.MAX_PAGE_SIZE,
      { after: input.afterSeq },
      { signal },
    );
    const messages = rows.map(toChatMessage);
    return { messages, hasMore, lastSeq: messages.at(-1)?.seq ?? input.afterSeq };
  }
}

import type { AppEventRepository } from "../repositories/app-event.repository.js";

/**
 * Events for the app's own backend that the services raise outside a database transaction of
 * their own. They are stored durably (the transactional outbox, docs/service-api.md "Webhooks to
 * your backend") and delivered as signed webhooks, at least once and in order per chat.
 *
 * `message.created` (a user's message) and `chat.deleted` are enqueued by the database itself, in
 * the transaction that stores the message or deletes the chat, so they need no method here.
 */
export interface AppEvents {
  /**
   * A device asked to stop a streamed reply (`message:stop`): the backend should stop generating
   * it. Resolves once the event is stored (it is then delivered even if this node dies).
   */
  stopRequested(event: {
    userId: string;
    chatId: string;
    streamId: string;
    /** ISO 8601. */
    requestedAt: string;
  }): Promise<void>;
}

/** No backend to tell (webhooks not configured). */
export const noAppEvents: AppEvents = {
  async stopRequested() {},
};

/**
 * Stores each event in the transactional outbox (app_events), which every node delivers. Used
 * when APP_WEBHOOK_URL is set.
 */
export class OutboxAppEvents implements AppEvents {
  constructor(
    private readonly repository: AppEventRepository,
    /** Wakes this node's delivery once an event is stored. */
    private readonly onStored: () => void = () => {},
  ) {}

  async stopRequested(event: Parameters<AppEvents["stopRequested"]>[0]): Promise<void> {
    await this.repository.enqueue(event.chatId, "stream.stop_requested", {
      userId: event.userId,
      chatId: event.chatId,
      streamId: event.streamId,
      requestedAt: event.requestedAt,
    });
    this.onStored();
  }
}

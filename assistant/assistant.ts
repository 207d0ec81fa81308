/**
 * The assistant's work, once a webhook is verified (webhook-server.ts does that):
 *
 * - `message.created` (a user's message): read the chat's recent history, start a streamed reply
 *   with the id `reply-<message id>`, stream the model's text as chunks, finish it, then record the
 *   token usage. The id makes a redelivered event harmless: the server answers `created: false`
 *   for a stream it has seen, and the stored reply carries it as its `clientId`.
 * - `stream.stop_requested`: abort that reply's model call. So does a chunk or finish answered
 *   `409 STREAM_STOPPED` (the stop reached the server before its webhook reached us).
 * - `chat.deleted`: abort every reply of that chat.
 *
 * Replies of one chat are generated one after the other (in the order the messages were sent,
 * which is the order the webhooks arrive), so each one sees the replies before it.
 */
import { type ChatModel, estimateTokens, type ModelMessage } from "./model.js";
import { type ChatMessage, type ServiceApi, ServiceApiError } from "./service-api.js";

/** The body of a delivery (docs/service-api.md "Webhooks to your backend"). */
export interface WebhookEvent {
  type: string;
  timestamp: string;
  data: unknown;
}

/** Any pino-style logger. */
export interface Logger {
  debug(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export interface AssistantOptions {
  service: ServiceApi;
  model: ChatModel;
  logger: Logger;
  /** Messages of the chat (up to and with the user's) sent to the model. */
  historyLimit: number;
  systemPrompt: string;
  /** Milliseconds tokens are gathered before they are sent as one chunk. */
  flushMs: number;
}

/** The longest reply the server stores (Limits.MAX_MESSAGE_CHARS): the model is cut off there. */
export const MAX_REPLY_CHARS = 64_000;

/** Why a reply's AbortController was aborted. */
type StopReason =
  /** The user stopped it (webhook or 409 STREAM_STOPPED): the server keeps the text so far. */
  | "stopped"
  /** The chat is gone: nothing can be stored. */
  | "chat-deleted"
  /** This worker is shutting down: the stream is failed so no device waits for it. */
  | "shutdown"
  /** A chunk could not be sent (see `error`). */
  | "service";

/**
 * The abort reason. Named `AbortError` like the platform's own, so that fetch and the `openai`
 * package treat an abort with it as a cancellation, not as a failure of the request.
 */
class ReplyAborted extends Error {
  override name = "AbortError";
  constructor(
    readonly reason: StopReason,
    readonly error?: unknown,
  ) {
    super(`reply aborted: ${reason}`);
  }
}

interface Job {
  userId: string;
  chatId: string;
  message: ChatMessage;
  streamId: string;
  controller: AbortController;
}

/** What `handle` did with an event. */
export type Handled = "queued" | "aborted" | "ignored";

export class Assistant {
  /** Replies queued or in progress, by stream id. */
  private readonly jobs = new Map<string, Job>();
  /** The tail of each chat's queue of replies. */
  private readonly queues = new Map<string, Promise<void>>();
  private readonly running = new Set<Promise<void>>();
  private closed = false;

  constructor(private readonly options: AssistantOptions) {}

  /** The reply's stream id for a user's message (deterministic: redeliveries map to it). */
  static streamIdFor(messageId: string): string {
    return `reply-${messageId}`;
  }

  /** Acts on one verified event; returns at once (the reply is generated in the background). */
  handle(event: WebhookEvent): Handled {
    if (this.closed) return "ignored";
    const data = (event.data ?? {}) as Record<string, unknown>;
    switch (event.type) {
      case "message.created":
        return this.enqueue(data);
      case "stream.stop_requested": {
        const job = typeof data.streamId === "string" ? this.jobs.get(data.streamId) : undefined;
        if (!job || job.userId !== data.userId) return "ignored";
        job.controller.abort(new ReplyAborted("stopped"));
        return "aborted";
      }
      case "chat.deleted": {
        let aborted = false;
        for (const job of this.jobs.values()) {
          if (job.chatId === data.chatId && job.userId === data.userId) {
            job.controller.abort(new ReplyAborted("chat-deleted"));
            aborted = true;
          }
        }
        return aborted ? "aborted" : "ignored";
      }
      default:
        return "ignored";
    }
  }

  /** Resolves once no reply is queued or in progress (for tests and shutdown). */
  async idle(): Promise<void> {
    while (this.running.size > 0) await Promise.allSettled([...this.running]);
  }

  /** Stops taking events, aborts every reply (failing its stream) and waits for them to end. */
  async close(): Promise<void> {
    this.closed = true;
    for (const job of this.jobs.values()) job.controller.abort(new ReplyAborted("shutdown"));
    await this.idle();
  }

  private enqueue(data: Record<string, unknown>): Handled {
    const message = data.message as ChatMessage | undefined;
    if (
      typeof data.userId !== "string" ||
      typeof data.chatId !== "string" ||
      typeof message?.id !== "string" ||
      typeof message.seq !== "number" ||
      message.role !== "user"
    ) {
      return "ignored";
    }
    const streamId = Assistant.streamIdFor(message.id);
    if (this.jobs.has(streamId)) return "ignored";
    const job: Job = {
      userId: data.userId,
      chatId: data.chatId,
      message,
      streamId,
      controller: new AbortController(),
    };
    this.jobs.set(streamId, job);
    const previous = this.queues.get(job.chatId) ?? Promise.resolve();
    const run = previous.then(() => this.respond(job));
    this.queues.set(job.chatId, run);
    this.running.add(run);
    void run.finally(() => {
      this.running.delete(run);
      this.jobs.delete(streamId);
      if (this.queues.get(job.chatId) === run) this.queues.delete(job.chatId);
    });
    return "queued";
  }

  /** One reply, start to end. Never throws: every outcome is handled and logged here. */
  private async respond(job: Job): Promise<void> {
    const { service, logger } = this.options;
    const log = { userId: job.userId, chatId: job.chatId, streamId: job.streamId };
    try {
      if (job.controller.signal.aborted) return;
      // The history up to and with the user's message: later messages are not this reply's.
      const history = await service.recentMessages(job.userId, job.chatId, {
        before: job.message.seq + 1,
        limit: this.options.historyLimit,
      });
      if (history.some((m) => m.clientId === job.streamId)) {
        logger.info(log, "already replied to this message");
        return;
      }
      if (job.controller.signal.aborted) return;
      const { created } = await service.startStream(job.userId, job.chatId, job.streamId);
      if (!created) {
        // A redelivery: this stream was started before (by us or another worker).
        logger.info(log, "reply already started");
        return;
      }
      await this.generate(job, history);
    } catch (err) {
      if (err instanceof ServiceApiError && err.status === 404) {
        logger.info({ ...log, err: err.message }, "chat or user gone; no reply");
      } else {
        logger.error({ ...log, err: String(err) }, "reply failed");
      }
    }
  }

  private async generate(job: Job, history: ChatMessage[]): Promise<void> {
    const { service, model, logger } = this.options;
    const { signal } = job.controller;
    const log = { userId: job.userId, chatId: job.chatId, streamId: job.streamId };
    const prompt: ModelMessage[] = [
      { role: "system", content: this.options.systemPrompt },
      ...history.map((m) => ({ role: m.role, content: m.content })),
    ];
    // A chunk that cannot be sent (stopped, or the server keeps failing) ends the model call.
    const sender = new ChunkSender(service, job.streamId, this.options.flushMs, (error) =>
      job.controller.abort(
        new ReplyAborted(
          error instanceof ServiceApiError && error.stopped ? "stopped" : "service",
          error,
        ),
      ),
    );

    let reply = "";
    let reportedTokens: number | undefined;
    let modelError: unknown;
    try {
      for await (const event of model.reply(prompt, signal)) {
        if (event.type === "usage") {
          reportedTokens = event.totalTokens;
          continue;
        }
        const room = MAX_REPLY_CHARS - reply.length;
        const text = event.text.length > room ? cut(event.text, room) : event.text;
        reply += text;
        sender.push(text);
        // Leaving the loop ends the model's call (its request is cancelled).
        if (text.length < event.text.length) break;
      }
    } catch (err) {
      if (!signal.aborted) modelError = err;
    }
    const tokens = reportedTokens ?? (reply ? estimateTokens(prompt, reply) : 0);

    const abort = signal.aborted ? (signal.reason as ReplyAborted) : undefined;
    try {
      if (abort?.reason === "stopped" || abort?.reason === "chat-deleted") {
        // The server already ended the stream (or it is gone with its chat): send nothing more.
        sender.cancel();
        logger.info({ ...log, reason: abort.reason, chars: reply.length }, "reply stopped");
        return;
      }
      if (abort?.reason === "service") {
        sender.cancel();
        throw abort.error;
      }
      if (abort?.reason === "shutdown") {
        await sender.drain();
        await service.fail(job.streamId, "The assistant shut down before finishing this reply");
        return;
      }
      if (modelError !== undefined || !reply) {
        await sender.drain();
        logger.warn({ ...log, err: String(modelError ?? "empty reply") }, "the model failed");
        await service.fail(
          job.streamId,
          modelError === undefined
            ? "The model returned an empty reply"
            : "The model failed while writing this reply",
        );
        return;
      }
      await sender.drain();
      await service.finish(job.streamId);
      logger.info({ ...log, chars: reply.length, tokens }, "reply finished");
    } catch (err) {
      if (err instanceof ServiceApiError && err.stopped) {
        // Stopped between the last chunk and the finish: the server kept the text.
        logger.info({ ...log, chars: reply.length }, "reply stopped");
      } else if (err instanceof ServiceApiError && err.status === 404) {
        logger.info(log, "the chat is gone; reply dropped");
      } else {
        logger.error({ ...log, err: String(err) }, "could not deliver the reply");
        // Best effort, so devices stop waiting at once instead of after the stream timeout.
        await service.fail(job.streamId, "The reply could not be delivered").catch(() => {});
      }
    } finally {
      // Tokens were spent whatever became of the reply.
      if (tokens > 0) {
        await service
          .addTokenUsage(job.userId, tokens)
          .catch((err) =>
            logger.warn({ ...log, tokens, err: String(err) }, "could not record usage"),
          );
      }
    }
  }
}

/** The first `max` UTF-16 units of `text`, not splitting a surrogate pair. */
function cut(text: string, max: number): string {
  const code = text.charCodeAt(max - 1);
  return text.slice(0, code >= 0xd800 && code <= 0xdbff ? max - 1 : max);
}

/**
 * Gathers the model's text and sends it as chunks with consecutive indexes: one request at a
 * time, each carrying everything that arrived while the previous one was on its way (or within
 * `flushMs`), so a fast model costs few requests. A failed chunk (after the client's retries,
 * which resend the same index) stops the sender and is reported once.
 */
class ChunkSender {
  private pending = "";
  private nextIndex = 0;
  private timer: NodeJS.Timeout | undefined;
  private sending: Promise<void> | undefined;
  private error: unknown;
  private cancelled = false;

  constructor(
    private readonly service: ServiceApi,
    private readonly streamId: string,
    private readonly flushMs: number,
    private readonly onError: (error: unknown) => void,
  ) {}

  push(text: string): void {
    if (this.cancelled || this.error !== undefined) return;
    this.pending += text;
    this.schedule();
  }

  /** Sends what is pending and waits for it; throws the chunk error, if any. */
  async drain(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    for (;;) {
      if (this.error !== undefined) throw this.error;
      if (this.sending) {
        await this.sending;
        continue;
      }
      if (!this.pending || this.cancelled) return;
      this.send();
    }
  }

  /** Drops what is pending and sends nothing more. */
  cancel(): void {
    this.cancelled = true;
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private schedule(): void {
    if (this.timer || this.sending || !this.pending) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.send();
    }, this.flushMs);
  }

  private send(): void {
    if (!this.pending || this.cancelled || this.error !== undefined) return;
    const delta = this.pending;
    const index = this.nextIndex++;
    this.pending = "";
    this.sending = this.service.appendChunk(this.streamId, index, delta).then(
      () => {
        this.sending = undefined;
        this.schedule();
      },
      (error: unknown) => {
        this.sending = undefined;
        this.error = error;
        this.onError(error);
      },
    );
  }
}

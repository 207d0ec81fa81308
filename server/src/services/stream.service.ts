import {
  type CommandResults,
  contentSchema,
  ErrorCode,
  Limits,
  StreamFailureReason,
} from "../../../protocol/index.js";
import type { Logger } from "../logger.js";
import type {
  StreamRecord,
  StreamStatus,
  StreamStore,
  TransitionOptions,
} from "../repositories/stream.repository.js";
import type { ChatService } from "./chat.service.js";
import { AppError, notFound } from "./errors.js";
import type { MessageService } from "./message.service.js";
import type { Notifier } from "./notifier.js";
import type { UserService } from "./user.service.js";

export interface StreamOptions {
  /** A stream with no chunk, finish or fail for this long is abandoned (marked failed). */
  timeoutMs: number;
  /** How long a finished or failed stream is remembered (idempotent retries of finish/fail). */
  retentionMs?: number;
  /**
   * Extra time a finish may take (storing the message) before the sweeper may consider the
   * stream abandoned; at least the command timeout.
   */
  finishLeaseMs?: number;
  /** How often this node looks for abandoned streams; default a quarter of the timeout (≤ 5 s). */
  sweepIntervalMs?: number;
}

/** A stream as the service API shows it. */
export interface StreamView {
  streamId: string;
  userId: string;
  chatId: string;
  role: "assistant" | "system";
  status: StreamStatus;
  /** The index the next chunk must have. */
  nextIndex: number;
  /** Characters received so far. */
  length: number;
  startedAt: string;
  /** When the stream is abandoned unless it hears from the backend (null once settled). */
  expiresAt: string | null;
  failure: { reason: string; message: string } | null;
}

const DEFAULT_RETENTION_MS = 10 * 60_000;
const DEFAULT_FINISH_LEASE_MS = 10_000;
const SWEEP_BATCH = 100;

/**
 * Streamed assistant replies: start, chunks, finish (stored once, through MessageService.post,
 * with `clientId` = `streamId`) or fail. Devices with the chat open see it live
 * (`message:streaming`, `message:delta`, then `message:created` or `message:failed`). A stream
 * the backend stops talking about is marked failed after `timeoutMs` by whichever node sweeps
 * first; the state lives in a StreamStore shared by the nodes (Redis) or in memory (one node).
 */
export class StreamService {
  private readonly retentionMs: number;
  private readonly finishLeaseMs: number;
  private sweeper: NodeJS.Timeout | undefined;
  private sweeping = false;

  constructor(
    private readonly store: StreamStore,
    private readonly users: UserService,
    private readonly chats: ChatService,
    private readonly messages: MessageService,
    private readonly notifier: Notifier,
    private readonly logger: Logger,
    private readonly options: StreamOptions,
  ) {
    this.retentionMs = options.retentionMs ?? DEFAULT_RETENTION_MS;
    this.finishLeaseMs = options.finishLeaseMs ?? DEFAULT_FINISH_LEASE_MS;
  }

  /**
   * Starts a streamed reply in one of the user's chats. A retried start with the same
   * `streamId` for the same chat returns the stream (`created: false`) and broadcasts nothing.
   */
  async start(input: {
    userId: string;
    chatId: string;
    streamId: string;
    role: "assistant" | "system";
  }): Promise<{ stream: StreamView; created: boolean }> {
    const actor = await this.users.requireActor(input.userId);
    await this.chats.requireOwned(actor, input.chatId);
    const now = Date.now();
    const record: StreamRecord = {
      streamId: input.streamId,
      userId: actor.userId,
      dbUserId: actor.dbUserId,
      chatId: input.chatId,
      role: input.role,
      status: "active",
      nextIndex: 0,
      length: 0,
      content: "",
      startedAt: now,
      deadline: now + this.options.timeoutMs,
      failureReason: null,
      failureMessage: null,
    };
    const { created, record: stored } = await this.guard(
      this.store.create(record, this.options.timeoutMs + this.retentionMs),
    );
    if (!created) {
      if (
        stored.userId !== input.userId ||
        stored.chatId !== input.chatId ||
        stored.role !== input.role
      ) {
        throw new AppError(ErrorCode.CONFLICT, "This streamId is already used by another stream");
      }
      return { stream: view(stored), created: false };
    }
    this.notifier.messageStreaming({
      streamId: stored.streamId,
      chatId: stored.chatId,
      role: stored.role,
      startedAt: new Date(stored.startedAt).toISOString(),
    });
    return { stream: view(stored), created: true };
  }

  async get(streamId: string): Promise<StreamView> {
    const record = await this.guard(this.store.get(streamId));
    if (!record) throw notFound("Stream");
    return view(record);
  }

  /**
   * Appends consecutive chunks, the first with index `firstIndex`. A chunk already applied (a
   * retry) is skipped without a broadcast; a chunk after a missing one is refused (CONFLICT,
   * with the expected index). Each applied chunk goes live as `message:delta`.
   */
  async append(
    streamId: string,
    firstIndex: number,
    deltas: string[],
  ): Promise<{ streamId: string; nextIndex: number; applied: number }> {
    const now = Date.now();
    const outcome = await this.guard(
      this.store.append(streamId, firstIndex, deltas, {
        maxLength: Limits.MAX_MESSAGE_CHARS,
        deadline: now + this.options.timeoutMs,
        ttlMs: this.options.timeoutMs + this.retentionMs,
      }),
    );
    switch (outcome.kind) {
      case "missing":
        throw notFound("Stream");
      case "status":
        throw notActive(outcome.status);
      case "gap":
        throw new AppError(
          ErrorCode.CONFLICT,
          `Chunks must arrive in order: the next index is ${outcome.nextIndex}`,
          { details: [{ path: "index", message: `expected ${outcome.nextIndex}` }] },
        );
      case "too_long":
        throw new AppError(
          ErrorCode.INVALID_PAYLOAD,
          `The reply would exceed ${Limits.MAX_MESSAGE_CHARS} characters; finish or fail it`,
          { details: [{ path: "delta", message: `at most ${Limits.MAX_MESSAGE_CHARS} in all` }] },
        );
    }
    const first = outcome.nextIndex - outcome.applied;
    const fresh = deltas.slice(deltas.length - outcome.applied);
    let offset = outcome.length - fresh.reduce((n, d) => n + d.length, 0);
    fresh.forEach((delta, i) => {
      this.notifier.messageDelta({
        streamId,
        chatId: outcome.chatId,
        index: first + i,
        offset,
        delta,
      });
      offset += delta.length;
    });
    return { streamId, nextIndex: outcome.nextIndex, applied: outcome.applied };
  }

  /**
   * Stores the reply once (MessageService.post, clientId = streamId), which broadcasts
   * `message:created`. `content`, when given, is stored instead of the chunks (the final text).
   * A retried finish returns the stored message with `duplicate: true`.
   */
  async finish(
    streamId: string,
    content: string | undefined,
  ): Promise<CommandResults["message:send"]> {
    let record = await this.guard(this.store.get(streamId));
    if (!record) throw notFound("Stream");
    if (record.status === "finished") return this.storeReply(record, content ?? record.content);
    if (record.status !== "active") throw notActive(record.status);

    const claimed = await this.guard(
      this.store.transition(streamId, "active", "finishing", {
        deadline: Date.now() + this.options.timeoutMs + this.finishLeaseMs,
        ttlMs: this.options.timeoutMs + this.finishLeaseMs + this.retentionMs,
      }),
    );
    if (!claimed.ok) {
      if (claimed.status === "missing") throw notFound("Stream");
      // Another request finished (or failed) it in the meantime.
      if (claimed.status === "finished") {
        const done = await this.guard(this.store.get(streamId));
        if (done) return this.storeReply(done, content ?? done.content);
      }
      throw notActive(claimed.status);
    }
    record = claimed.record;

    const text = content ?? record.content;
    const valid = contentSchema.safeParse(text);
    if (!valid.success) {
      await this.settle(streamId, "finishing", "active", {
        deadline: Date.now() + this.options.timeoutMs,
      });
      throw new AppError(
        ErrorCode.INVALID_PAYLOAD,
        content === undefined
          ? "The stream has no content to store: append chunks, give content, or fail it"
          : "content is invalid",
        {
          details: valid.error.issues.map((i) => ({ path: "content", message: i.message })),
        },
      );
    }

    let result: CommandResults["message:send"];
    try {
      result = await this.storeReply(record, text);
    } catch (err) {
      if (err instanceof AppError && err.code === ErrorCode.NOT_FOUND) {
        // The chat (or the user) was deleted meanwhile: nothing can be stored, ever.
        await this.settle(streamId, "finishing", "failed", {
          failure: { reason: StreamFailureReason.FAILED, message: "The chat no longer exists" },
        });
      } else {
        // Transient (database unavailable) or a conflict: the backend may retry the finish.
        await this.settle(streamId, "finishing", "active", {
          deadline: Date.now() + this.options.timeoutMs,
        });
      }
      throw err;
    }
    await this.settle(streamId, "finishing", "finished", { content: result.message.content });
    return result;
  }

  /**
   * Ends the stream without storing anything and broadcasts `message:failed`. Failing a failed
   * stream again changes nothing; failing a finished one is a CONFLICT.
   */
  async fail(streamId: string, message: string | undefined): Promise<{ stream: StreamView }> {
    const failure = {
      reason: StreamFailureReason.FAILED,
      message: message ?? "The reply could not be completed",
    };
    const outcome = await this.guard(
      this.store.transition(streamId, "active", "failed", { ttlMs: this.retentionMs, failure }),
    );
    if (outcome.ok) {
      this.notifier.messageFailed({
        streamId,
        chatId: outcome.record.chatId,
        reason: failure.reason,
        message: failure.message,
      });
      return { stream: view(outcome.record) };
    }
    if (outcome.status === "missing") throw notFound("Stream");
    if (outcome.status === "failed") return { stream: await this.get(streamId) };
    throw notActive(outcome.status);
  }

  /**
   * Marks the streams whose deadline has passed as failed (ABANDONED) and broadcasts
   * `message:failed` for each. Every node runs this; the store hands each stream to one node.
   */
  async sweep(now = Date.now()): Promise<number> {
    const seconds = Math.round(this.options.timeoutMs / 100) / 10;
    const failure = {
      reason: StreamFailureReason.ABANDONED,
      message: `The reply was abandoned: nothing was received for ${seconds} s`,
    };
    let total = 0;
    for (;;) {
      const expired = await this.store.expire(now, SWEEP_BATCH, this.retentionMs, failure);
      for (const r of expired) {
        this.notifier.messageFailed({
          streamId: r.streamId,
          chatId: r.chatId,
          reason: failure.reason,
          message: failure.message,
        });
      }
      total += expired.length;
      if (expired.length < SWEEP_BATCH) return total;
    }
  }

  /** Starts this node's periodic sweep for abandoned streams. */
  startSweeper(): void {
    if (this.sweeper) return;
    const interval =
      this.options.sweepIntervalMs ??
      Math.min(5000, Math.max(25, Math.floor(this.options.timeoutMs / 4)));
    this.sweeper = setInterval(() => {
      if (this.sweeping) return;
      this.sweeping = true;
      this.sweep()
        .then((n) => {
          if (n > 0) this.logger.info({ streams: n }, "abandoned streams marked failed");
        })
        .catch((err: unknown) => this.logger.warn({ err: String(err) }, "stream sweep failed"))
        .finally(() => {
          this.sweeping = false;
        });
    }, interval);
    this.sweeper.unref();
  }

  stop(): void {
    if (this.sweeper) clearInterval(this.sweeper);
    this.sweeper = undefined;
  }

  /** Stores the reply through the one message path (idempotent per streamId). */
  private storeReply(record: StreamRecord, content: string) {
    return this.messages.post(
      { userId: record.userId, dbUserId: record.dbUserId },
      {
        chatId: record.chatId,
        clientId: record.streamId,
        body: { role: record.role, content },
      },
    );
  }

  /** A transition after the decisive step; losing it to a concurrent change is only logged. */
  private async settle(
    streamId: string,
    from: StreamStatus,
    to: StreamStatus,
    options: Omit<TransitionOptions, "ttlMs">,
  ): Promise<void> {
    const ttlMs = to === "active" ? this.options.timeoutMs + this.retentionMs : this.retentionMs;
    try {
      const outcome = await this.store.transition(streamId, from, to, { ...options, ttlMs });
      if (!outcome.ok) {
        this.logger.warn(
          { streamId, from, to, status: outcome.status },
          "stream changed meanwhile",
        );
      }
    } catch (err) {
      this.logger.warn({ streamId, err: String(err) }, "could not update stream state");
    }
  }

  /** Store failures (Redis down) become UNAVAILABLE; nothing was changed, retry. */
  private async guard<T>(work: Promise<T>): Promise<T> {
    try {
      return await work;
    } catch (err) {
      if (err instanceof AppError) throw err;
      this.logger.warn({ err: String(err) }, "stream state unavailable");
      throw new AppError(ErrorCode.UNAVAILABLE, "Stream state is unavailable; retry");
    }
  }
}

function notActive(status: StreamStatus): AppError {
  const what: Record<StreamStatus, string> = {
    active: "is active",
    finishing: "is being finished",
    finished: "is already finished",
    failed: "has failed; nothing was stored",
  };
  return new AppError(ErrorCode.CONFLICT, `The stream ${what[status]}`);
}

function view(r: StreamRecord): StreamView {
  const open = r.status === "active" || r.status === "finishing";
  return {
    streamId: r.streamId,
    userId: r.userId,
    chatId: r.chatId,
    role: r.role,
    status: r.status,
    nextIndex: r.nextIndex,
    length: r.length,
    startedAt: new Date(r.startedAt).toISOString(),
    expiresAt: open ? new Date(r.deadline).toISOString() : null,
    failure:
      r.failureReason !== null
        ? { reason: r.failureReason, message: r.failureMessage ?? "" }
        : null,
  };
}

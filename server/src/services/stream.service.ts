import {
  type ChatMessage,
  type CommandResults,
  ErrorCode,
  Limits,
  StreamFailureReason,
} from "../../../protocol/index.js";
import type { Logger } from "../logger.js";
import { type CommandPayload, contentSchema } from "../protocol-schemas.js";
import type {
  StreamRecord,
  StreamStatus,
  StreamStore,
  TransitionOptions,
} from "../repositories/stream.repository.js";
import type { Actor } from "./actor.js";
import { type AppEvents, noAppEvents } from "./app-events.js";
import type { ChatService } from "./chat.service.js";
import { DeltaCoalescer } from "./delta-coalescer.js";
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
  /**
   * Milliseconds the chunks of a stream are gathered into one `message:delta` (DeltaCoalescer);
   * 0 sends one delta per chunk. Default 40.
   */
  flushMs?: number;
}

/** A stream as the service API shows it. */
export interface StreamView {
  streamId: string;
  userId: string;
  chatId: string;
  role: "assistant" | "system";
  /** `stopping` (a stop whose reply is being stored) is shown as `stopped`. */
  status: Exclude<StreamStatus, "stopping">;
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
const DEFAULT_FLUSH_MS = 40;
/** How long a stop waits for a finish in progress to end (stored, or back to active). */
const STOP_WAIT_MS = 3000;
const STOP_POLL_MS = 25;

/**
 * Streamed assistant replies: start, chunks, finish (stored once, through MessageService.post,
 * with `clientId` = `streamId`), fail, or a user's stop (the text so far stored once, marked
 * stopped). Devices with the chat open see it live (`message:streaming`, coalesced
 * `message:delta`s, then `message:created`, `message:stopped` or `message:failed`), and every
 * device of the user sees `chat:generating` when it starts and ends. A stream the backend stops
 * talking about is marked failed after `timeoutMs` by whichever node sweeps first; the state
 * lives in a StreamStore shared by the nodes (Redis) or in memory (one node), whose atomic
 * transitions make stop, finish, fail and abandonment racing each other end in one outcome.
 */
export class StreamService {
  private readonly retentionMs: number;
  private readonly finishLeaseMs: number;
  private readonly deltas: DeltaCoalescer;
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
    private readonly appEvents: AppEvents = noAppEvents,
  ) {
    this.retentionMs = options.retentionMs ?? DEFAULT_RETENTION_MS;
    this.finishLeaseMs = options.finishLeaseMs ?? DEFAULT_FINISH_LEASE_MS;
    this.deltas = new DeltaCoalescer(
      (delta) => this.notifier.messageDelta(delta),
      options.flushMs ?? DEFAULT_FLUSH_MS,
    );
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
      finishContent: null,
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
    const startedAt = new Date(stored.startedAt).toISOString();
    this.notifier.messageStreaming({
      streamId: stored.streamId,
      chatId: stored.chatId,
      role: stored.role,
      startedAt,
    });
    this.notifier.chatGenerating(stored.userId, {
      chatId: stored.chatId,
      streamId: stored.streamId,
      active: true,
      startedAt,
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
   * with the expected index). Applied chunks go live as `message:delta`, coalesced over
   * `flushMs`. A stopped stream answers STREAM_STOPPED: the backend must stop generating.
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
      this.deltas.add({ streamId, chatId: outcome.chatId, index: first + i, offset, delta });
      offset += delta.length;
    });
    return { streamId, nextIndex: outcome.nextIndex, applied: outcome.applied };
  }

  /**
   * Stores the reply once (MessageService.post, clientId = streamId), which broadcasts
   * `message:created`. `content`, when given, is stored instead of the chunks (the final text).
   * A retried finish returns the stored message with `duplicate: true`. The claim records
   * `content` in the stream, so that if this node dies while storing, the sweeper of any node
   * stores exactly that once the lease has passed (and a retry then gets it as a duplicate).
   */
  async finish(
    streamId: string,
    content: string | undefined,
  ): Promise<CommandResults["message:send"]> {
    // An invalid override is refused before the claim, so the stream never records one.
    if (content !== undefined) {
      const valid = contentSchema.safeParse(content);
      if (!valid.success) {
        throw new AppError(ErrorCode.INVALID_PAYLOAD, "content is invalid", {
          details: valid.error.issues.map((i) => ({ path: "content", message: i.message })),
        });
      }
    }
    let record: StreamRecord;
    // A finish already storing the reply (a retry racing it, on this node or another) is waited
    // for, then answered like a retry after it: the stored reply (`duplicate: true`).
    const waitUntil = Date.now() + STOP_WAIT_MS;
    for (let attempt = 0; ; attempt++) {
      const current = await this.guard(this.store.get(streamId));
      if (!current) throw notFound("Stream");
      if (current.status === "finished") {
        return this.storeReply(current, content ?? current.content);
      }
      if (current.status === "active") {
        const claimed = await this.guard(
          this.store.transition(streamId, "active", "finishing", {
            deadline: Date.now() + this.options.timeoutMs + this.finishLeaseMs,
            ttlMs: this.options.timeoutMs + this.finishLeaseMs + this.retentionMs,
            finishContent: content ?? null,
          }),
        );
        if (claimed.ok) {
          record = claimed.record;
          break;
        }
        if (claimed.status === "missing") throw notFound("Stream");
        // Changed meanwhile (another finish, a fail, a stop or a sweep): look again.
      } else if (current.status !== "finishing") {
        throw notActive(current.status);
      }
      if (Date.now() >= waitUntil || attempt > STOP_WAIT_MS / STOP_POLL_MS) {
        throw new AppError(ErrorCode.UNAVAILABLE, "The reply is being stored; retry the finish");
      }
      await new Promise((r) => setTimeout(r, STOP_POLL_MS));
    }

    const text = content ?? record.content;
    const valid = contentSchema.safeParse(text);
    if (!valid.success) {
      await this.settle(streamId, "finishing", "active", {
        deadline: Date.now() + this.options.timeoutMs,
        finishContent: null,
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
    // The text this node still holds goes out before the stored message.
    this.deltas.flush(streamId);
    try {
      result = await this.storeReply(record, text);
    } catch (err) {
      if (err instanceof AppError && err.code === ErrorCode.NOT_FOUND) {
        // The chat (or the user) was deleted meanwhile: nothing can be stored, ever.
        await this.settle(streamId, "finishing", "failed", {
          failure: { reason: StreamFailureReason.FAILED, message: "The chat no longer exists" },
        });
        this.generatingEnded(record);
      } else {
        // Transient (database unavailable) or a conflict: the backend may retry the finish.
        await this.settle(streamId, "finishing", "active", {
          deadline: Date.now() + this.options.timeoutMs,
          finishContent: null,
        });
      }
      throw err;
    }
    await this.settle(streamId, "finishing", "finished", {
      content: result.message.content,
      finishContent: null,
    });
    this.generatingEnded(record);
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
      this.deltas.flush(streamId);
      this.notifier.messageFailed({
        streamId,
        chatId: outcome.record.chatId,
        reason: failure.reason,
        message: failure.message,
      });
      this.generatingEnded(outcome.record);
      return { stream: view(outcome.record) };
    }
    if (outcome.status === "missing") throw notFound("Stream");
    if (outcome.status === "failed") return { stream: await this.get(streamId) };
    throw notActive(outcome.status);
  }

  /**
   * Stops a reply in progress in one of the actor's chats (`message:stop`). At once: the stream
   * is `stopping` (the backend's next chunk, finish or fail answers STREAM_STOPPED),
   * `message:stopped` goes to the chat's room and `chat:generating` (inactive) to the user's
   * devices, and the backend is told (AppEvents.stopRequested). Then the text so far is stored
   * once (clientId = streamId, `stopped: true`; nothing when there is no text), which
   * broadcasts `message:created`. A stream that finished or failed first is reported as such;
   * a stop of a stopped stream answers the same again. Another user's stream, or a stream of
   * another chat, is NOT_FOUND.
   */
  async stop(
    actor: Actor,
    input: CommandPayload<"message:stop">,
  ): Promise<CommandResults["message:stop"]> {
    const { streamId } = input;
    const waitUntil = Date.now() + STOP_WAIT_MS;
    for (let attempt = 0; ; attempt++) {
      const record = await this.guard(this.store.get(streamId));
      if (!record || record.userId !== actor.userId || record.chatId !== input.chatId) {
        throw notFound("Stream");
      }
      switch (record.status) {
        case "active": {
          const stoppedAt = Date.now();
          const claimed = await this.guard(
            this.store.transition(streamId, "active", "stopping", {
              deadline: stoppedAt + this.finishLeaseMs,
              ttlMs: this.finishLeaseMs + this.retentionMs,
            }),
          );
          // Changed meanwhile (a chunk cannot change the status: a finish, fail or sweep did).
          if (!claimed.ok) break;
          this.announceStop(claimed.record, stoppedAt);
          // Recorded before the ack; if it cannot be (database unavailable), the stream stays
          // `stopping` and the sweeper records it with the reply once the database is back.
          const told = await this.tellStop(claimed.record, stoppedAt);
          const message = await this.storeStopped(claimed.record, told);
          return { streamId, status: "stopped", message };
        }
        case "stopping":
        case "stopped":
          // A repeated stop (another device, a retry): the same outcome. Storing is idempotent;
          // the stop that claimed it (or the sweeper) settles it, once the backend is told.
          return { streamId, status: "stopped", message: await this.storeStopped(record, false) };
        case "finished":
          return {
            streamId,
            status: "finished",
            message: (await this.storeReply(record, record.content)).message,
          };
        case "failed":
          return { streamId, status: "failed", message: null };
        case "finishing":
          // A finish is storing the reply: its outcome decides.
          break;
      }
      if (Date.now() >= waitUntil || attempt > STOP_WAIT_MS / STOP_POLL_MS) {
        throw new AppError(ErrorCode.UNAVAILABLE, "The reply is being stored; retry the stop");
      }
      await new Promise((r) => setTimeout(r, STOP_POLL_MS));
    }
  }

  /**
   * Marks the active streams whose deadline has passed as failed (ABANDONED) and broadcasts
   * `message:failed` for each; finishes storing the replies whose storing did not complete (a
   * node that died inside a finish or a stop, or Postgres down at the stop). Every node runs
   * this; the store hands each stream to one node.
   */
  async sweep(now = Date.now()): Promise<number> {
    const seconds = Math.round(this.options.timeoutMs / 100) / 10;
    const failure = {
      reason: StreamFailureReason.ABANDONED,
      message: `The reply was abandoned: nothing was received for ${seconds} s`,
    };
    let total = 0;
    for (;;) {
      const expired = await this.store.expire(
        now,
        SWEEP_BATCH,
        this.retentionMs,
        failure,
        now + this.finishLeaseMs,
      );
      const stops: Promise<unknown>[] = [];
      for (const r of expired) {
        if (r.status === "finishing") {
          stops.push(this.storeFinishing(r, failure));
          continue;
        }
        if (r.status === "stopping") {
          // Devices may have missed the stop if its node died at once: told again (idempotent).
          // So is the backend, whose event may not have been recorded (at least once).
          this.announceStop(r, now);
          stops.push(this.tellStop(r, now).then((told) => this.storeStopped(r, told)));
          continue;
        }
        this.deltas.flush(r.streamId);
        this.notifier.messageFailed({
          streamId: r.streamId,
          chatId: r.chatId,
          reason: failure.reason,
          message: failure.message,
        });
        this.generatingEnded(r);
      }
      await Promise.all(stops);
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
          if (n > 0) this.logger.info({ streams: n }, "overdue streams failed or stored");
        })
        .catch((err: unknown) => this.logger.warn({ err: String(err) }, "stream sweep failed"))
        .finally(() => {
          this.sweeping = false;
        });
    }, interval);
    this.sweeper.unref();
  }

  /** Stops the sweeper and sends the deltas this node still holds (shutdown). */
  close(): void {
    if (this.sweeper) clearInterval(this.sweeper);
    this.sweeper = undefined;
    this.deltas.flushAll();
  }

  /** Stores the reply through the one message path (idempotent per streamId). */
  private storeReply(record: StreamRecord, content: string, stopped = false) {
    return this.messages.post(
      { userId: record.userId, dbUserId: record.dbUserId },
      {
        chatId: record.chatId,
        clientId: record.streamId,
        body: { role: record.role, content },
        ...(stopped ? { stopped: true as const } : {}),
      },
    );
  }

  /** `message:stopped` to the chat's room and the end of `chat:generating` to the user. */
  private announceStop(record: StreamRecord, stoppedAt: number): void {
    this.deltas.flush(record.streamId);
    this.notifier.messageStopped({
      streamId: record.streamId,
      chatId: record.chatId,
      stoppedAt: new Date(stoppedAt).toISOString(),
    });
    this.generatingEnded(record);
  }

  private generatingEnded(record: StreamRecord): void {
    this.notifier.chatGenerating(record.userId, {
      chatId: record.chatId,
      streamId: record.streamId,
      active: false,
      startedAt: new Date(record.startedAt).toISOString(),
    });
  }

  /**
   * Records `stream.stop_requested` for the app's backend (AppEvents.stopRequested); false when
   * it could not be recorded (the backend still learns it from STREAM_STOPPED on its next call,
   * and the sweeper tries again).
   */
  private async tellStop(record: StreamRecord, requestedAt: number): Promise<boolean> {
    try {
      await this.appEvents.stopRequested({
        userId: record.userId,
        chatId: record.chatId,
        streamId: record.streamId,
        requestedAt: new Date(requestedAt).toISOString(),
      });
      return true;
    } catch (err) {
      this.logger.warn(
        { streamId: record.streamId, err: String(err) },
        "could not record the stop event; the sweeper will retry",
      );
      return false;
    }
  }

  /**
   * Stores a stopped stream's text (once: clientId = streamId) and marks it `stopped`. With no
   * text, or its chat deleted, there is nothing to store. If storing fails otherwise (database
   * unavailable) it stays `stopping`, and the sweeper stores it once its lease has passed;
   * so it does when `told` is false (the backend's event is not recorded yet).
   */
  private async storeStopped(record: StreamRecord, told = true): Promise<ChatMessage | null> {
    let message: ChatMessage | null = null;
    if (contentSchema.safeParse(record.content).success) {
      try {
        message = (await this.storeReply(record, record.content, true)).message;
      } catch (err) {
        if (!(err instanceof AppError && err.code === ErrorCode.NOT_FOUND)) {
          this.logger.warn(
            { streamId: record.streamId, err: String(err) },
            "could not store a stopped reply; the sweeper will retry",
          );
          return null;
        }
      }
    }
    // Until the backend's event is recorded too, the sweeper keeps the stop (and retries both).
    if (record.status === "stopping" && told) {
      await this.settle(record.streamId, "stopping", "stopped", {});
    }
    return message;
  }

  /**
   * Stores the reply of a finish whose node died (or whose storing did not complete) once its
   * lease has passed: the finish's content override, or else the chunks, once (clientId =
   * streamId), then `finished`. Devices get `message:created`, again when the dead node had
   * stored it already (it may have died before broadcasting). A stream with nothing to store is
   * failed like an abandoned one; with the database unavailable it stays `finishing`, and the
   * next sweep after the new lease tries again.
   */
  private async storeFinishing(
    record: StreamRecord,
    abandoned: { reason: StreamFailureReason; message: string },
  ): Promise<void> {
    this.deltas.flush(record.streamId);
    const text = record.finishContent ?? record.content;
    let failure: { reason: StreamFailureReason; message: string } = abandoned;
    if (contentSchema.safeParse(text).success) {
      try {
        const result = await this.storeReply(record, text);
        if (result.duplicate) this.notifier.messageCreated(record.userId, result.message);
        await this.settle(record.streamId, "finishing", "finished", {
          content: result.message.content,
          finishContent: null,
        });
        this.generatingEnded(record);
        return;
      } catch (err) {
        const code = err instanceof AppError ? err.code : undefined;
        if (code !== ErrorCode.NOT_FOUND && code !== ErrorCode.CONFLICT) {
          this.logger.warn(
            { streamId: record.streamId, err: String(err) },
            "could not store a finished reply; the sweeper will retry",
          );
          return;
        }
        failure = {
          reason: StreamFailureReason.FAILED,
          message:
            code === ErrorCode.NOT_FOUND
              ? "The chat no longer exists"
              : "This streamId was already used for a different message in this chat",
        };
      }
    }
    let outcome: Awaited<ReturnType<StreamStore["transition"]>>;
    try {
      outcome = await this.store.transition(record.streamId, "finishing", "failed", {
        ttlMs: this.retentionMs,
        failure,
      });
    } catch (err) {
      this.logger.warn({ streamId: record.streamId, err: String(err) }, "could not fail a stream");
      return;
    }
    if (!outcome.ok) return;
    this.notifier.messageFailed({
      streamId: record.streamId,
      chatId: record.chatId,
      reason: failure.reason,
      message: failure.message,
    });
    this.generatingEnded(record);
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
  if (status === "stopping" || status === "stopped") {
    return new AppError(
      ErrorCode.STREAM_STOPPED,
      "The reply was stopped by the user: stop generating it (the text so far is stored)",
    );
  }
  const what: Record<Exclude<StreamStatus, "stopping" | "stopped">, string> = {
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
    status: r.status === "stopping" ? "stopped" : r.status,
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

/**
 * A small client of the chat server's service API (docs/service-api.md): exactly the calls the
 * assistant needs, over plain `fetch`. Every call is bounded by a timeout; the idempotent ones
 * (everything but token usage) are retried after a 503, a 500 or a network error, with the same
 * ids, so a retry never duplicates anything.
 */

/** A message as the service API returns it (the socket protocol's `ChatMessage`). */
export interface ChatMessage {
  id: string;
  chatId: string;
  seq: number;
  clientId: string;
  role: "user" | "assistant" | "system";
  content: string;
  createdAt: string;
  stopped?: true;
}

/** A streamed reply's state as the service API shows it. */
export interface StreamView {
  streamId: string;
  chatId: string;
  status: string;
  nextIndex: number;
}

/** An error answer of the service API: the HTTP status and the protocol's error code. */
export class ServiceApiError extends Error {
  override name = "ServiceApiError";
  constructor(
    readonly status: number,
    /** `error.code` of the answer (`STREAM_STOPPED`, `NOT_FOUND`, …), or `NETWORK`. */
    readonly code: string,
    message: string,
  ) {
    super(message);
  }

  /** The user stopped the reply (`message:stop`): stop generating, send nothing more. */
  get stopped(): boolean {
    return this.code === "STREAM_STOPPED";
  }
}

export interface ServiceApiOptions {
  /** Milliseconds one request may take. Default 10 s. */
  timeoutMs?: number;
  /** Attempts of an idempotent call before giving up. Default 5 (about 3 s of backoff). */
  attempts?: number;
  /** First backoff in milliseconds, doubled after each attempt. Default 200. */
  backoffMs?: number;
}

const retryable = (e: ServiceApiError) =>
  e.status === 503 || e.status === 500 || e.code === "NETWORK";

export class ServiceApi {
  private readonly timeoutMs: number;
  private readonly attempts: number;
  private readonly backoffMs: number;

  constructor(
    private readonly baseUrl: string,
    private readonly apiKey: string,
    options: ServiceApiOptions = {},
  ) {
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.attempts = options.attempts ?? 5;
    this.backoffMs = options.backoffMs ?? 200;
  }

  /** The chat's messages with `seq < before` (the latest `limit` of them), oldest first. */
  async recentMessages(
    userId: string,
    chatId: string,
    options: { before: number; limit: number },
  ): Promise<ChatMessage[]> {
    const query = `before=${options.before}&limit=${options.limit}`;
    const page = await this.retrying<{ messages: ChatMessage[] }>(
      "GET",
      `/users/${enc(userId)}/chats/${enc(chatId)}/messages?${query}`,
    );
    return page.messages;
  }

  /** Starts (or, for a `streamId` seen before, finds) a streamed reply. */
  startStream(userId: string, chatId: string, streamId: string) {
    return this.retrying<{ stream: StreamView; created: boolean }>(
      "POST",
      `/users/${enc(userId)}/chats/${enc(chatId)}/streams`,
      { streamId, role: "assistant" },
    );
  }

  /** Appends one chunk; a retried index is skipped by the server, so retrying is safe. */
  appendChunk(streamId: string, index: number, delta: string) {
    return this.retrying<{ nextIndex: number }>("POST", `/streams/${enc(streamId)}/chunks`, {
      index,
      delta,
    });
  }

  /** Stores the reply (once: a retried finish answers the stored message). */
  finish(streamId: string) {
    return this.retrying<{ message: ChatMessage }>("POST", `/streams/${enc(streamId)}/finish`, {});
  }

  /** Ends the stream without storing it; devices get `message:failed` with `message`. */
  fail(streamId: string, message: string) {
    return this.retrying("POST", `/streams/${enc(streamId)}/fail`, { message });
  }

  /**
   * Adds to the user's `token_usage`. Not idempotent, so retried only after a 503 or 500 (the
   * server changed nothing then), never after a network error whose outcome is unknown.
   */
  addTokenUsage(userId: string, tokens: number) {
    return this.retrying<{ tokenUsage: number }>(
      "POST",
      `/users/${enc(userId)}/token-usage`,
      { tokens },
      (e) => e.status === 503 || e.status === 500,
    );
  }

  private async retrying<T>(
    method: "GET" | "POST",
    path: string,
    body?: unknown,
    mayRetry: (e: ServiceApiError) => boolean = retryable,
  ): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.request<T>(method, path, body);
      } catch (e) {
        if (!(e instanceof ServiceApiError) || !mayRetry(e) || attempt >= this.attempts) throw e;
        await new Promise((r) => setTimeout(r, this.backoffMs * 2 ** (attempt - 1)));
      }
    }
  }

  private async request<T>(method: "GET" | "POST", path: string, body?: unknown): Promise<T> {
    let res: Response;
    try {
      res = await fetch(`${this.baseUrl}/service/v1${path}`, {
        method,
        headers: {
          authorization: `Bearer ${this.apiKey}`,
          ...(body === undefined ? {} : { "content-type": "application/json" }),
        },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
        signal: AbortSignal.timeout(this.timeoutMs),
      });
    } catch (e) {
      throw new ServiceApiError(0, "NETWORK", `${method} ${path}: ${(e as Error).message}`);
    }
    const text = await res.text().catch(() => "");
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    if (!res.ok) {
      const error = (json as { error?: { code?: unknown; message?: unknown } } | undefined)?.error;
      throw new ServiceApiError(
        res.status,
        typeof error?.code === "string" ? error.code : `HTTP_${res.status}`,
        `${method} ${path}: ${res.status} ${typeof error?.message === "string" ? error.message : text.slice(0, 200)}`,
      );
    }
    return json as T;
  }
}

const enc = encodeURIComponent;

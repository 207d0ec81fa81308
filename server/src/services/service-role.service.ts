import {
  type CommandResults,
  ErrorCode,
  type MessageBody,
  type UserStats,
} from "../../../protocol/index.js";
import type { SearchRepository, SearchStatus } from "../repositories/search.repository.js";
import type { ChatService } from "./chat.service.js";
import { AppError, notFound } from "./errors.js";
import type { MessageService } from "./message.service.js";
import type { Notifier } from "./notifier.js";
import type { UserService } from "./user.service.js";

/** A recorded search, as the service API returns it. */
export interface RecordedSearch {
  id: string;
  status: SearchStatus;
  resultsCount: number;
  createdAt: string;
}

/**
 * What the app's own backend may do as the service role (docs/service-api.md). It acts on any
 * user, named by Clerk user id; the rules are the same as for the user's own devices, and every
 * change is broadcast to them live.
 */
export class ServiceRoleService {
  constructor(
    private readonly users: UserService,
    private readonly messages: MessageService,
    private readonly chats: ChatService,
    private readonly searches: SearchRepository,
    private readonly notifier: Notifier,
  ) {}

  /**
   * Posts a message (an assistant reply, a system note) into one of the user's chats: stored
   * once per `clientId`, broadcast like a message sent from a device.
   */
  async postMessage(input: {
    userId: string;
    chatId: string;
    clientId: string;
    role: Exclude<MessageBody["role"], "user">;
    content: string;
  }): Promise<CommandResults["message:send"]> {
    const actor = await this.users.requireActor(input.userId);
    return this.messages.post(actor, {
      chatId: input.chatId,
      clientId: input.clientId,
      body: { role: input.role, content: input.content },
    });
  }

  /** A page of a chat's messages (for building the model's context). */
  async chatMessages(
    userId: string,
    input: {
      chatId: string;
      before?: number | undefined;
      after?: number | undefined;
      limit?: number | undefined;
    },
    signal?: AbortSignal,
  ): Promise<CommandResults["message:history"]> {
    const actor = await this.users.requireActor(userId);
    return this.messages.history(actor, input, signal);
  }

  async addTokenUsage(userId: string, tokens: number): Promise<{ tokenUsage: number }> {
    const result = await this.users.addTokenUsage(userId, tokens);
    this.notifier.statsChanged(userId);
    return result;
  }

  /**
   * Records a search; the database bumps the user's `total_searches` in the same transaction.
   * `resultsCount` defaults to the length of `results` when that is an array.
   */
  async recordSearch(
    userId: string,
    input: {
      filters: Record<string, unknown>;
      results: unknown;
      resultsCount?: number | undefined;
      status: SearchStatus;
    },
  ): Promise<RecordedSearch> {
    const resultsCount =
      input.resultsCount ?? (Array.isArray(input.results) ? input.results.length : undefined);
    if (resultsCount === undefined) {
      throw invalid("resultsCount", "is required when results is not an array");
    }
    if (input.status === "no_results" && resultsCount !== 0) {
      throw invalid("resultsCount", "must be 0 when status is no_results");
    }
    const row = await this.searches.insertForClerkUser(userId, {
      filters: input.filters,
      results: input.results,
      resultsCount,
      status: input.status,
    });
    if (!row) throw notFound("User");
    this.notifier.statsChanged(userId);
    return {
      id: row.id,
      status: row.status,
      resultsCount: row.resultsCount,
      createdAt: row.createdAt.toISOString(),
    };
  }

  /** A page of the user's chats, as `chat:list` gives it to their devices. */
  async chatList(
    userId: string,
    input: { limit?: number | undefined; cursor?: string | undefined },
    signal?: AbortSignal,
  ): Promise<CommandResults["chat:list"]> {
    const actor = await this.users.requireActor(userId);
    return this.chats.list(actor, input, signal);
  }

  async stats(userId: string): Promise<UserStats> {
    await this.users.requireActor(userId);
    return this.users.stats(userId);
  }
}

function invalid(path: string, message: string): AppError {
  return new AppError(ErrorCode.INVALID_PAYLOAD, `${path} ${message}`, {
    details: [{ path, message }],
  });
}

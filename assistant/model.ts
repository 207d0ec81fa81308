/**
 * What the assistant needs from a model: given the conversation and an AbortSignal, an async
 * iterable of events, text deltas as they are generated and, when the model reports it, the
 * token usage. Aborting the signal must end the call (the HTTP request to the provider is
 * cancelled) and make the iteration throw.
 */

/** One message of the conversation sent to the model. */
export interface ModelMessage {
  role: "system" | "user" | "assistant";
  content: string;
}

export type ModelEvent =
  /** The next piece of the reply's text. */
  | { type: "text"; text: string }
  /** Tokens the provider counted for the whole call (prompt and completion). */
  | { type: "usage"; totalTokens: number };

export interface ChatModel {
  /** For logs: which model this is. */
  readonly name: string;
  reply(messages: ModelMessage[], signal: AbortSignal): AsyncIterable<ModelEvent>;
}

/**
 * The usage recorded when the model reported none: about four characters per token, for the
 * prompt and the reply, at least 1. A rough figure, but the usual one for English text.
 */
export function estimateTokens(messages: ModelMessage[], reply: string): number {
  const chars = messages.reduce((n, m) => n + m.content.length, 0) + reply.length;
  return Math.max(1, Math.ceil(chars / 4));
}

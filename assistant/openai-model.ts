/**
 * A model behind any OpenAI-compatible Chat Completions API (OpenAI, Ollama, vLLM, LiteLLM, a
 * hosted provider), through the official `openai` package: a streamed completion whose HTTP
 * request is cancelled when the signal aborts.
 */
import OpenAI from "openai";
import type { ChatModel, ModelEvent, ModelMessage } from "./model.js";

export interface OpenAIModelOptions {
  baseUrl: string;
  /** Local servers need none; the package insists on one, so a placeholder is sent then. */
  apiKey: string | undefined;
  model: string;
}

export class OpenAIModel implements ChatModel {
  readonly name: string;
  private readonly client: OpenAI;

  constructor(private readonly options: OpenAIModelOptions) {
    this.name = options.model;
    this.client = new OpenAI({
      baseURL: options.baseUrl,
      apiKey: options.apiKey ?? "unused",
      // Retries happen only before the first byte of the reply; a cut stream is not retried
      // (the stream would repeat text the devices have already shown).
      maxRetries: 2,
      // Until the response starts; the server abandons a stream silent for 60 s anyway.
      timeout: 60_000,
    });
  }

  async *reply(messages: ModelMessage[], signal: AbortSignal): AsyncIterable<ModelEvent> {
    const stream = await this.client.chat.completions.create(
      {
        model: this.options.model,
        messages,
        stream: true,
        // A last chunk with the usage of the whole call (OpenAI, vLLM and Ollama support it).
        stream_options: { include_usage: true },
      },
      { signal },
    );
    let finished = false;
    for await (const chunk of stream) {
      const choice = chunk.choices[0];
      const text = choice?.delta?.content;
      if (text) yield { type: "text", text };
      if (choice?.finish_reason) finished = true;
      if (chunk.usage) yield { type: "usage", totalTokens: chunk.usage.total_tokens };
    }
    // The package ends the iteration quietly when the request is aborted: make it an error, so
    // a stopped reply is never mistaken for a finished one.
    signal.throwIfAborted();
    // A provider that closes the stream cleanly but early (no finish_reason) cut the reply short.
    if (!finished) throw new Error("The model's stream ended before the reply was finished");
  }
}

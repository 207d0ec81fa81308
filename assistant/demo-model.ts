/**
 * The built-in demo model, used when no model is configured: a deterministic, clearly labelled
 * reply derived from the user's message, streamed word by word at a readable pace (25 words a
 * second by default, about five seconds in all), so that on a fresh machine `npm start` shows
 * the whole loop, and there is time to press stop.
 */
import type { ChatModel, ModelEvent, ModelMessage } from "./model.js";

/** The label every demo reply starts with. */
export const DEMO_LABEL = "Demo model — no LLM configured:";

/** The demo reply to `messages` (deterministic: the same conversation gives the same text). */
export function demoReplyText(messages: ModelMessage[]): string {
  const users = messages.filter((m) => m.role === "user");
  const last = users.at(-1)?.content.trim() ?? "";
  const words = last.split(/\s+/).filter(Boolean);
  const quoted = words.length > 12 ? `${words.slice(0, 12).join(" ")} …` : words.join(" ");
  return [
    DEMO_LABEL,
    `you wrote “${quoted}” (${words.length} ${words.length === 1 ? "word" : "words"},`,
    `${last.length} characters), message ${users.length} of this chat.`,
    "This reply is streamed word by word by the built-in demo model, so you can watch the whole",
    "loop work: your message reached the assistant as a signed webhook, the assistant read the",
    "chat's recent history through the service API, and it is now sending this text as chunks of",
    "a streamed reply that every open device shows live. Press stop at any moment to end it",
    "early: the text so far is kept and marked as stopped. To get real answers, set",
    "OPENAI_BASE_URL, OPENAI_API_KEY and OPENAI_MODEL for Ollama, vLLM or any OpenAI-compatible",
    "provider, and restart. See docs/assistant.md for how this assistant works and how to copy",
    "it into your own backend.",
  ].join(" ");
}

/** Resolves after `ms`, or rejects with the signal's reason as soon as it is aborted. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

export class DemoModel implements ChatModel {
  readonly name = "demo";
  constructor(private readonly wordsPerSecond = 25) {}

  async *reply(messages: ModelMessage[], signal: AbortSignal): AsyncIterable<ModelEvent> {
    const words = demoReplyText(messages).split(" ");
    const pause = 1000 / this.wordsPerSecond;
    for (const [i, word] of words.entries()) {
      await sleep(pause, signal);
      yield { type: "text", text: i === 0 ? word : ` ${word}` };
    }
  }
}

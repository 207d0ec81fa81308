import { pino } from "pino";

/** The structured JSON logger. Tokens and message bodies are never logged. */
export type Logger = pino.Logger;

export function createLogger(level: string): Logger {
  return pino({
    level,
    base: { service: "chat-backend" },
    // Defence in depth: if a token or a body ever reaches a log call, it is not written.
    redact: {
      paths: ["token", "*.token", "authorization", "*.authorization", "content", "*.content"],
      censor: "[redacted]",
    },
  });
}

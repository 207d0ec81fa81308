import { fileURLToPath } from "node:url";
import { defineConfig } from "vitest/config";

const source = (file: string) => fileURLToPath(new URL(file, import.meta.url));

export default defineConfig({
  // The workspace packages run from their sources (their published entry points are dist/).
  resolve: {
    alias: {
      "@chat-backend/protocol": source("protocol/index.ts"),
      "@chat-backend/client": source("client-sdk/src/index.ts"),
      "@chat-backend/react": source("client-sdk/react/src/index.ts"),
    },
  },
  test: {
    include: ["tests/**/*.test.ts"],
    reporters: ["default", "./tests/helpers/summary-reporter.ts"],
    globalSetup: ["tests/helpers/global-setup.ts"],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // Files run in parallel, each in its own database (see tests/helpers/db.ts).
    pool: "forks",
    env: { NODE_ENV: "test" },
  },
});

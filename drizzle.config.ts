import { defineConfig } from "drizzle-kit";

// Used only by `npm run db:generate` (drizzle-kit). Migrations are applied by `npm run db:migrate`.
export default defineConfig({
  dialect: "postgresql",
  schema: "./server/src/db/schema.ts",
  out: "./drizzle",
});

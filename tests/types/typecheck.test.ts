/**
 * Runs the contract's type tests in `npm test`: tests/types/client-contract.ts as a client
 * compiles it (no Node types, a browser's lib, erasable syntax only). A type test that fails,
 * or an `@ts-expect-error` that stops failing, fails this test with tsc's message.
 * (tests/types/server-contract.ts is checked by the root `npm run typecheck`.)
 */
import { execFile } from "node:child_process";
import path from "node:path";
import { promisify } from "node:util";
import { expect, it } from "vitest";

const run = promisify(execFile);
const ROOT = path.resolve(import.meta.dirname, "../..");

it("the client's contract type tests compile", async () => {
  const tsc = path.join(ROOT, "node_modules/typescript/bin/tsc");
  const result = await run(process.execPath, [tsc, "-p", "tests/types/tsconfig.json"], {
    cwd: ROOT,
    timeout: 120_000,
  }).then(
    () => "",
    (e: { stdout?: string; message: string }) => e.stdout || e.message,
  );
  expect(result).toBe("");
}, 150_000);

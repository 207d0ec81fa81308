/**
 * The process-level handlers main.ts installs (server/src/process-handlers.ts), in a real child
 * process: an unhandled rejection is logged and the process keeps running; an uncaught
 * exception is logged and the process exits with code 1.
 */
import { spawn } from "node:child_process";
import { describe, expect, test } from "vitest";

/** Runs `body` after installing the handlers; resolves with the exit code and the output. */
function runChild(body: string): Promise<{ code: number | null; output: string }> {
  const script = `
    import { createLogger } from "./server/src/logger.ts";
    import { installProcessHandlers } from "./server/src/process-handlers.ts";
    installProcessHandlers(createLogger("info"));
    ${body}
  `;
  const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout.on("data", (d) => {
    output += d;
  });
  child.stderr.on("data", (d) => {
    output += d;
  });
  return new Promise((resolve) => child.once("exit", (code) => resolve({ code, output })));
}

describe("process-level handlers", () => {
  test("an unhandled rejection is logged and the process keeps serving", async () => {
    const { code, output } = await runChild(`
      Promise.reject(Object.assign(new Error("dropped by a library"), { code: "57P01" }));
      setTimeout(() => { console.log("still running"); process.exit(0); }, 300);
    `);
    expect(code).toBe(0);
    expect(output).toMatch(/unhandled promise rejection/);
    expect(output).toMatch(/dropped by a library/);
    expect(output).toMatch(/still running/);
  }, 30_000);

  test("an uncaught exception is logged and the process exits with code 1", async () => {
    const { code, output } = await runChild(`
      setTimeout(() => { throw new Error("broken state"); }, 10);
      setTimeout(() => { console.log("should not run"); process.exit(0); }, 2000);
    `);
    expect(code).toBe(1);
    expect(output).toMatch(/uncaught exception: exiting/);
    expect(output).toMatch(/broken state/);
    expect(output).not.toMatch(/should not run/);
  }, 30_000);
});

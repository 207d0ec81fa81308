/**
 * Prints one plain closing line, `Tests: N passed, N failed, N skipped; files: N, N failed`,
 * after vitest's own summary: a form any CI log reader understands. A file that failed to load
 * or whose hooks threw has no failed test of its own, so files are counted too.
 */
import type { Reporter, SerializedError, TestModule } from "vitest/node";

export default class SummaryReporter implements Reporter {
  onTestRunEnd(
    testModules: ReadonlyArray<TestModule>,
    unhandledErrors: ReadonlyArray<SerializedError> = [],
  ): void {
    let passed = 0;
    let failed = 0;
    let skipped = 0;
    const failedFiles = testModules.filter((m) => m.state() === "failed").length;
    for (const module of testModules) {
      for (const test of module.children.allTests()) {
        const state = test.result().state;
        if (state === "passed") passed++;
        else if (state === "failed") failed++;
        else skipped++;
      }
    }
    const errors = unhandledErrors.length ? `; ${unhandledErrors.length} unhandled errors` : "";
    process.stdout.write(
      `\nTests: ${passed} passed, ${failed} failed, ${skipped} skipped; files: ${testModules.length}, ${failedFiles} failed${errors}\n`,
    );
  }
}

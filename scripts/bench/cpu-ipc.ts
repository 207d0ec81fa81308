/**
 * Preloaded (`--import`) into a server process by `npm run bench:send` (send-cost.ts), so that
 * the product (server/src/main.ts) and the bare server (scripts/loadtest/bare-server.ts) are
 * measured the same way without changing either. Over IPC it answers:
 * - `{ type: "cpu" }` with this process's `process.cpuUsage()`;
 * - `{ type: "profile-start" }` / `{ type: "profile-stop", file }`: V8's CPU profiler (through
 *   node:inspector) over exactly the window between the two, written to `file`
 *   (`.cpuprofile`, for `npm run loadtest:profile`).
 */
import { writeFile } from "node:fs/promises";
import { Session } from "node:inspector/promises";

let session: Session | undefined;

process.on("message", (m: { type?: string; file?: string }) => {
  const run = async () => {
    if (m?.type === "cpu") {
      process.send?.({ type: "cpu", usage: process.cpuUsage() });
    } else if (m?.type === "profile-start") {
      session = new Session();
      session.connect();
      await session.post("Profiler.enable");
      await session.post("Profiler.setSamplingInterval", { interval: 200 });
      await session.post("Profiler.start");
      process.send?.({ type: "profile-started" });
    } else if (m?.type === "profile-stop" && session && m.file) {
      const { profile } = await session.post("Profiler.stop");
      session.disconnect();
      session = undefined;
      await writeFile(m.file, JSON.stringify(profile));
      process.send?.({ type: "profile-stopped" });
    }
  };
  run().catch((err) => process.send?.({ type: "error", error: String(err) }));
});

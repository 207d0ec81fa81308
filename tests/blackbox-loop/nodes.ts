/**
 * Black-box helpers: chat server nodes as real processes (`server/src/main.ts`, as `npm start`
 * runs it) in production mode with a Clerk-style key, configured only through the environment
 * variables the README documents; the reference assistant as its own process
 * (`assistant/main.ts`, as `npm run assistant`). Tests drive them only through the documented
 * protocol, service API and webhooks.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { io } from "socket.io-client";
import { expect } from "vitest";
import type { ClientSocket } from "../helpers/server.js";
import { AUTHORIZED_PARTY, eventually, testKeys, tokenFor } from "../helpers/server.js";

export interface NodeProcess {
  url: string;
  port: number;
  child: ChildProcess;
  output(): string;
  /** SIGKILL: no shutdown, no flush; resolves once it has exited. */
  kill(): Promise<void>;
  /** SIGTERM (drain) and wait for the exit. */
  stop(): Promise<void>;
}

function spawnLogged(script: string, env: Record<string, string>) {
  const child = spawn(process.execPath, ["--import", "tsx", script], {
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout?.on("data", (d) => {
    output += d;
  });
  child.stderr?.on("data", (d) => {
    output += d;
  });
  return { child, output: () => output };
}

async function exited(child: ChildProcess, signal: NodeJS.Signals): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const done = new Promise((r) => child.once("exit", r));
  child.kill(signal);
  await done;
}

/** A production-mode node on `port` (0: any), with `env` on top of the production basics. */
export async function startNode(
  databaseUrl: string,
  env: Record<string, string>,
  port = 0,
): Promise<NodeProcess> {
  const { child, output } = spawnLogged("server/src/main.ts", {
    NODE_ENV: "production",
    HOST: "127.0.0.1",
    PORT: String(port),
    DATABASE_URL: databaseUrl,
    CLERK_JWT_KEY: testKeys.publicKeyPem,
    CLERK_AUTHORIZED_PARTIES: AUTHORIZED_PARTY,
    LOG_LEVEL: "info",
    ...env,
  });
  const listening = await eventually(() => {
    if (child.exitCode !== null) throw new Error(`node exited:\n${output()}`);
    const m = /"msg":"listening on http:\/\/127\.0\.0\.1:(\d+)"/.exec(output());
    if (!m) throw new Error(`not listening yet:\n${output()}`);
    return Number(m[1]);
  }, 45_000);
  return {
    url: `http://127.0.0.1:${listening}`,
    port: listening,
    child,
    output,
    kill: () => exited(child, "SIGKILL"),
    stop: () => exited(child, "SIGTERM"),
  };
}

/** `npm run assistant` as a process, listening on `port`. */
export async function startAssistantProcess(env: Record<string, string>) {
  const { child, output } = spawnLogged("assistant/main.ts", { LOG_LEVEL: "info", ...env });
  await eventually(() => {
    if (child.exitCode !== null) throw new Error(`assistant exited:\n${output()}`);
    if (!output().includes("assistant listening")) throw new Error(`not yet:\n${output()}`);
  }, 45_000);
  return { child, output, stop: () => exited(child, "SIGTERM") };
}

/** A real socket.io-client of `userId` on `url`, connected (WebSocket, no reconnection). */
export async function device(url: string, userId: string): Promise<ClientSocket> {
  const token = await tokenFor(userId);
  const s: ClientSocket = io(url, {
    auth: { token },
    transports: ["websocket"],
    reconnection: false,
    forceNew: true,
  });
  await new Promise<void>((resolve, reject) => {
    s.once("connect", resolve);
    s.once("connect_error", reject);
  });
  return s;
}

/** Every event a socket receives from now on, in arrival order. */
export function record(s: ClientSocket) {
  const events: { name: string; payload: Record<string, unknown>; at: number }[] = [];
  s.onAny((name: string, payload: Record<string, unknown>) =>
    events.push({ name, payload, at: Date.now() }),
  );
  return {
    events,
    of: <T = Record<string, unknown>>(name: string, streamId?: string) =>
      events
        .filter(
          (e) => e.name === name && (streamId === undefined || e.payload.streamId === streamId),
        )
        .map((e) => e.payload as T),
  };
}

/**
 * What a client that follows docs/protocol.md shows for one stream: the snapshot's text, then
 * every delta placed by offset (a delta within the text is dropped, but must agree with it; one
 * beyond the text is a hole and fails). Deltas received at any time after the join count, also
 * those that came before the `chat:open` ack.
 */
export function placeByOffset(
  from: string,
  deltas: readonly { offset: number; delta: string }[],
): string {
  let text = from;
  for (const d of [...deltas].sort((a, b) => a.offset - b.offset)) {
    const end = d.offset + d.delta.length;
    expect(
      d.offset,
      `a hole before offset ${d.offset} (text has ${text.length})`,
    ).toBeLessThanOrEqual(text.length);
    expect(text.slice(d.offset, Math.min(end, text.length))).toBe(
      d.delta.slice(0, Math.min(end, text.length) - d.offset),
    );
    if (end > text.length) text += d.delta.slice(text.length - d.offset);
  }
  return text;
}

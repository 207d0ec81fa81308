/**
 * The packages as an app developer gets them: `npm pack` of @chat-backend/protocol,
 * @chat-backend/client and @chat-backend/react, installed into a stock Vite React-TS project
 * created here (create-vite 9.3's react-ts template: its package.json, its three tsconfigs with
 * `erasableSyntaxOnly`, lib ES2023 and `skipLibCheck`, its vite.config.ts and main.tsx with
 * StrictMode), with nothing else from this repository. The project's own `npm run build`
 * (`tsc -b && vite build`) must pass first without zod installed, then with it, and the app's
 * type checks (tests/packages/vite-app/src/contract.tsx: `@ts-expect-error` on a wrong payload,
 * an unknown event, a wrong result; payload types that are not `any`) must hold both times.
 *
 * Finally the project's own build (development mode, so StrictMode double-mounts) drives a live
 * chat in Chromium against a real server: two devices, one socket each, a chat created on one
 * and opened on the other, a message shown on both.
 *
 * Needs the npm registry (or a warm npm cache: the install is `--prefer-offline`).
 */
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import type { IncomingMessage, ServerResponse } from "node:http";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import type { Browser, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { launchChromium, startDemoServer } from "../browser/helpers.js";
import type { TestServer } from "../helpers/server.js";

const run = promisify(execFile);
const ROOT = path.resolve(import.meta.dirname, "../..");
const APP_SRC = path.join(import.meta.dirname, "vite-app/src");
const NPM_FLAGS = ["--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error"];
const MINUTES = 60_000;

let dir = "";
let project = "";

async function sh(cmd: string, args: string[], cwd: string, timeout = 5 * MINUTES) {
  try {
    return await run(cmd, args, { cwd, timeout, maxBuffer: 32 * 1024 * 1024 });
  } catch (e) {
    const err = e as { stdout?: string; stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(" ")} failed:\n${err.stdout ?? ""}\n${err.stderr ?? ""}`);
  }
}

const json = (value: unknown) => `${JSON.stringify(value, null, 2)}\n`;

/** The files of create-vite 9.3.0's template-react-ts (minus its linter and demo assets). */
async function writeViteProject(packs: Record<string, string>) {
  await mkdir(path.join(project, "src"), { recursive: true });
  await mkdir(path.join(project, "public"), { recursive: true });
  await writeFile(
    path.join(project, "package.json"),
    json({
      name: "vite-react-typescript-starter",
      private: true,
      version: "0.0.0",
      type: "module",
      scripts: { dev: "vite", build: "tsc -b && vite build", preview: "vite preview" },
      dependencies: {
        react: "^19.3.1",
        "react-dom": "^19.3.1",
        ...Object.fromEntries(Object.entries(packs).map(([name, file]) => [name, `file:${file}`])),
      },
      devDependencies: {
        "@types/node": "^24.19.2",
        "@types/react": "^19.3.0",
        "@types/react-dom": "^19.3.0",
        "@vitejs/plugin-react": "^6.1.2",
        typescript: "~7.0.2",
        vite: "^8.3.4",
      },
    }),
  );
  await writeFile(
    path.join(project, "tsconfig.json"),
    json({
      files: [],
      references: [{ path: "./tsconfig.app.json" }, { path: "./tsconfig.node.json" }],
    }),
  );
  const linting = {
    noUnusedLocals: true,
    noUnusedParameters: true,
    erasableSyntaxOnly: true,
    noFallthroughCasesInSwitch: true,
  };
  await writeFile(
    path.join(project, "tsconfig.app.json"),
    json({
      compilerOptions: {
        tsBuildInfoFile: "./node_modules/.tmp/tsconfig.app.tsbuildinfo",
        target: "es2023",
        lib: ["ES2023", "DOM"],
        module: "esnext",
        types: ["vite/client"],
        allowArbitraryExtensions: true,
        skipLibCheck: true,
        moduleResolution: "bundler",
        allowImportingTsExtensions: true,
        verbatimModuleSyntax: true,
        moduleDetection: "force",
        noEmit: true,
        jsx: "react-jsx",
        ...linting,
      },
      include: ["src"],
    }),
  );
  await writeFile(
    path.join(project, "tsconfig.node.json"),
    json({
      compilerOptions: {
        tsBuildInfoFile: "./node_modules/.tmp/tsconfig.node.tsbuildinfo",
        target: "es2023",
        lib: ["ES2023"],
        types: ["node"],
        skipLibCheck: true,
        module: "nodenext",
        allowImportingTsExtensions: true,
        verbatimModuleSyntax: true,
        moduleDetection: "force",
        noEmit: true,
        ...linting,
      },
      include: ["vite.config.ts"],
    }),
  );
  await writeFile(
    path.join(project, "vite.config.ts"),
    [
      "import react from '@vitejs/plugin-react'",
      "import { defineConfig } from 'vite'",
      "",
      "// https://vite.dev/config/",
      "export default defineConfig({",
      "  plugins: [react()],",
      "})",
      "",
    ].join("\n"),
  );
  await writeFile(
    path.join(project, "index.html"),
    [
      "<!doctype html>",
      '<html lang="en">',
      "  <head>",
      '    <meta charset="UTF-8" />',
      '    <link rel="icon" type="image/svg+xml" href="/favicon.svg" />',
      '    <meta name="viewport" content="width=device-width, initial-scale=1.0" />',
      "    <title>Vite + React + TS</title>",
      "  </head>",
      "  <body>",
      '    <div id="root"></div>',
      '    <script type="module" src="/src/main.tsx"></script>',
      "  </body>",
      "</html>",
      "",
    ].join("\n"),
  );
  await writeFile(
    path.join(project, "public/favicon.svg"),
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 1 1"><rect width="1" height="1"/></svg>\n',
  );
  await writeFile(path.join(project, "src/index.css"), ":root { font-family: system-ui; }\n");
  await writeFile(
    path.join(project, "src/main.tsx"),
    [
      "import { StrictMode } from 'react'",
      "import { createRoot } from 'react-dom/client'",
      "import './index.css'",
      "import App from './App.tsx'",
      "",
      "createRoot(document.getElementById('root')!).render(",
      "  <StrictMode>",
      "    <App />",
      "  </StrictMode>,",
      ")",
      "",
    ].join("\n"),
  );
  for (const file of await readdir(APP_SRC)) {
    await copyFile(path.join(APP_SRC, file), path.join(project, "src", file));
  }
  // docs/sdk.md's quick start, as a reader would paste it.
  const docs = await readFile(path.join(ROOT, "docs/sdk.md"), "utf8");
  const section = docs.slice(docs.indexOf("## Quick start: a Vite React-TS app"));
  const snippet = /```tsx\n([\s\S]*?)```/.exec(section)?.[1];
  if (!snippet) throw new Error("docs/sdk.md has no quick start snippet");
  await writeFile(path.join(project, "src/QuickStart.tsx"), snippet);
}

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "chat-backend-fresh-"));
  project = path.join(dir, "app");
  const packs = path.join(dir, "packs");
  await mkdir(packs);
  await sh("npm", ["run", "sdk:build"], ROOT);
  const { stdout } = await sh(
    "npm",
    [
      "pack",
      "--json",
      "--pack-destination",
      packs,
      "-w",
      "@chat-backend/protocol",
      "-w",
      "@chat-backend/client",
      "-w",
      "@chat-backend/react",
    ],
    ROOT,
  );
  const packed = JSON.parse(stdout) as { name: string; filename: string }[];
  expect(packed.map((p) => p.name).sort()).toEqual([
    "@chat-backend/client",
    "@chat-backend/protocol",
    "@chat-backend/react",
  ]);
  await writeViteProject(
    Object.fromEntries(packed.map((p) => [p.name, path.join(packs, p.filename)])),
  );
  await sh("npm", ["install", ...NPM_FLAGS], project, 8 * MINUTES);
}, 12 * MINUTES);

afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("the packed packages in a fresh Vite React-TS project", () => {
  it("ship only their build and depend on nothing from this repository but each other", async () => {
    const manifest = async (name: string) =>
      JSON.parse(
        await readFile(path.join(project, "node_modules", name, "package.json"), "utf8"),
      ) as {
        dependencies?: Record<string, string>;
        peerDependencies?: Record<string, string>;
      };
    expect((await manifest("@chat-backend/protocol")).dependencies ?? {}).toEqual({});
    expect(Object.keys((await manifest("@chat-backend/client")).dependencies ?? {}).sort()).toEqual(
      ["@chat-backend/protocol", "socket.io-client"],
    );
    const react = await manifest("@chat-backend/react");
    expect(Object.keys(react.dependencies ?? {})).toEqual(["@chat-backend/client"]);
    expect(Object.keys(react.peerDependencies ?? {})).toEqual(["react"]);
    // The client's own copy of the protocol would mean a second, registry-resolved package.
    expect(existsSync(path.join(project, "node_modules/@chat-backend/client/node_modules"))).toBe(
      false,
    );
    for (const name of ["protocol", "client", "react"]) {
      const files = await readdir(path.join(project, "node_modules/@chat-backend", name));
      expect(files.sort()).toEqual(["dist", "package.json"]);
    }
  });

  it(
    "type-checks with the template's tsconfig and builds, without zod installed",
    async () => {
      expect(existsSync(path.join(project, "node_modules/zod"))).toBe(false);
      await sh("npm", ["run", "build"], project);
      const assets = await readdir(path.join(project, "dist/assets"));
      expect(assets.some((f) => f.endsWith(".js"))).toBe(true);
    },
    5 * MINUTES,
  );

  it(
    "still type-checks and builds with zod installed",
    async () => {
      await sh("npm", ["install", "zod@^4", ...NPM_FLAGS], project, 5 * MINUTES);
      expect(existsSync(path.join(project, "node_modules/zod"))).toBe(true);
      await rm(path.join(project, "node_modules/.tmp"), { recursive: true, force: true });
      await sh("npm", ["run", "build"], project);
    },
    6 * MINUTES,
  );

  it(
    "fails the type check of a wrong payload (the checks are not vacuous)",
    async () => {
      const file = path.join(project, "src/contract.tsx");
      const source = await readFile(file, "utf8");
      const marker =
        "  // @ts-expect-error a title is a string, and `bogus` is no field of chat:create\n";
      expect(source).toContain(marker);
      await writeFile(file, source.replace(marker, ""));
      await rm(path.join(project, "node_modules/.tmp"), { recursive: true, force: true });
      try {
        const failure = await run("npx", ["tsc", "-b"], {
          cwd: project,
          timeout: 3 * MINUTES,
        }).then(
          () => null,
          (e: { stdout?: string }) => e.stdout ?? "",
        );
        expect(failure).not.toBeNull();
        // TS2322: `42` is not assignable to the title's `string`.
        expect(failure).toMatch(/src\/contract\.tsx\(\d+,\d+\): error TS2322/);
      } finally {
        await writeFile(file, source);
      }
    },
    4 * MINUTES,
  );

  it(
    "drives a live chat in Chromium, two devices, StrictMode on (React's development build)",
    async () => {
      // The project's own build, in development mode (StrictMode double-mounts there), under /app/.
      await sh(
        "npx",
        ["vite", "build", "--mode", "development", "--base", "/app/", "--outDir", "app-dist"],
        project,
      );
      const appDir = path.join(project, "app-dist");
      // React's development build went in (a warning text only it has), so StrictMode is active.
      const bundles = (await readdir(path.join(appDir, "assets"))).filter((f) => f.endsWith(".js"));
      const code = (
        await Promise.all(bundles.map((f) => readFile(path.join(appDir, "assets", f), "utf8")))
      ).join("\n");
      expect(code).toContain("was not wrapped in act");
      let server: TestServer | undefined;
      let browser: Browser | undefined;
      try {
        [server, browser] = await Promise.all([startDemoServer(), launchChromium()]);
        const httpServer = server.app.io.httpServer;
        const routes = httpServer.listeners("request") as ((
          req: IncomingMessage,
          res: ServerResponse,
        ) => void)[];
        httpServer.removeAllListeners("request");
        const types: Record<string, string> = {
          ".html": "text/html; charset=utf-8",
          ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8",
          ".svg": "image/svg+xml",
        };
        httpServer.on("request", (req: IncomingMessage, res: ServerResponse) => {
          const url = new URL(req.url ?? "/", "http://x");
          if (req.method === "GET" && url.pathname.startsWith("/app/")) {
            const rel = url.pathname.slice(5) || "index.html";
            const file = path.join(appDir, path.normalize(rel));
            if (!file.startsWith(appDir)) return res.writeHead(404).end();
            readFile(file).then(
              (body) => {
                res.writeHead(200, {
                  "content-type": types[path.extname(file)] ?? "application/octet-stream",
                });
                res.end(body);
              },
              () => res.writeHead(404).end(),
            );
            return;
          }
          for (const route of routes) route.call(httpServer, req, res);
        });
        let upgrades = 0;
        httpServer.on("upgrade", () => {
          upgrades++;
        });

        const poll = { timeout: 15_000, interval: 50 };
        const open = async (): Promise<Page> => {
          const page = await (await (browser as Browser).newContext()).newPage();
          await page.goto(`${(server as TestServer).url}/app/index.html?user=fresh_vite_user`);
          await expect
            .poll(() => page.getByTestId("connection").textContent(), poll)
            .toBe("online");
          return page;
        };
        const desktop = await open();
        const phone = await open();
        // StrictMode's double mount: still one socket per device.
        expect(upgrades).toBe(2);

        await desktop.getByTestId("new-chat").click();
        await expect
          .poll(() => desktop.getByTestId("chat").getAttribute("data-status"), poll)
          .toBe("ready");
        await expect.poll(() => phone.getByTestId("chat-row").count(), poll).toBe(1);
        await phone.getByTestId("chat-row").getByRole("button").click();
        await expect
          .poll(() => phone.getByTestId("chat").getAttribute("data-status"), poll)
          .toBe("ready");

        await desktop.getByTestId("composer").fill("hello from the fresh app");
        await desktop.getByTestId("composer").press("Enter");
        const rows = (page: Page) =>
          page
            .getByTestId("item")
            .evaluateAll((els) => els.map((e) => [e.textContent, e.getAttribute("data-status")]));
        for (const page of [desktop, phone]) {
          await expect.poll(() => rows(page), poll).toEqual([["hello from the fresh app", "sent"]]);
        }
        await expect.poll(() => desktop.getByTestId("stats").textContent(), poll).toBe("1");
      } finally {
        await browser?.close();
        await server?.close();
      }
    },
    4 * MINUTES,
  );
});

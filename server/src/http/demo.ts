/**
 * Development only: the demo page (demo/index.html) and its script (the React app of
 * demo/main.tsx on @chat-backend/react, with React's development build so that StrictMode
 * checks it), bundled once with esbuild at start and served from memory.
 */
import { readFile } from "node:fs/promises";
import type { IncomingMessage, ServerResponse } from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";

/** Serves the demo; resolves true when it answered the request, false to pass it on. */
export type DemoHandler = (req: IncomingMessage, res: ServerResponse) => Promise<boolean>;

const demoDir = new URL("../../../demo/", import.meta.url);

const headers = {
  "cache-control": "no-store",
  "x-content-type-options": "nosniff",
  "content-security-policy":
    "default-src 'self'; connect-src 'self' ws: wss:; style-src 'self' 'unsafe-inline'; img-src 'self' data:",
};

export async function createDemoHandler(): Promise<DemoHandler> {
  // Loaded here so that a production node never imports the bundler.
  const { build } = await import("esbuild");
  const [html, css, bundle] = await Promise.all([
    readFile(new URL("index.html", demoDir)),
    readFile(new URL("demo.css", demoDir)),
    build({
      entryPoints: [fileURLToPath(new URL("main.tsx", demoDir))],
      bundle: true,
      write: false,
      format: "esm",
      platform: "browser",
      target: "es2020",
      // A linked map (/demo.js.map): fetched only by the browser's developer tools, so a page
      // load takes the script alone (React's development build is large).
      outfile: "demo.js",
      sourcemap: "linked",
      jsx: "automatic",
      // React's development build: StrictMode's double renders and warnings (a dev page).
      define: { "process.env.NODE_ENV": '"development"' },
      // The workspace packages (@chat-backend/*) from their sources, not their built dist/.
      conditions: ["@chat-backend/source"],
      logLevel: "silent",
    }),
  ]);
  const output = (name: string) => {
    const file = bundle.outputFiles.find((f) => path.basename(f.path) === name)?.contents;
    if (!file) throw new Error(`esbuild produced no ${name} for demo/main.tsx`);
    return file;
  };
  const [script, map] = [output("demo.js"), output("demo.js.map")];

  const files: Record<string, { body: Uint8Array; type: string }> = {
    "/": { body: html, type: "text/html; charset=utf-8" },
    "/index.html": { body: html, type: "text/html; charset=utf-8" },
    "/demo.js": { body: script, type: "text/javascript; charset=utf-8" },
    "/demo.js.map": { body: map, type: "application/json; charset=utf-8" },
    "/demo.css": { body: css, type: "text/css; charset=utf-8" },
  };

  return async (req, res) => {
    if (req.method !== "GET" && req.method !== "HEAD") return false;
    const file = files[new URL(req.url ?? "/", "http://localhost").pathname];
    if (!file) return false;
    res.writeHead(200, {
      ...headers,
      "content-type": file.type,
      "content-length": file.body.byteLength,
    });
    res.end(req.method === "HEAD" ? undefined : file.body);
    return true;
  };
}

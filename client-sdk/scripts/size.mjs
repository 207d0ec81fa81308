/**
 * Bundle size of the SDK as an app would ship it: esbuild, minified, ESM for browsers, once with
 * socket.io-client bundled in and once with it external, socket.io-client alone (the baseline
 * of the same run), the React package with everything it brings (React external) and alone
 * (React and the SDK external). Prints min and
 * min+gzip bytes.
 * Usage: node client-sdk/scripts/size.mjs
 */
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";
import { build } from "esbuild";

const entry = fileURLToPath(new URL("../src/index.ts", import.meta.url));
const reactEntry = fileURLToPath(new URL("../react/src/index.ts", import.meta.url));

async function measure(label, external, entryPoint = entry) {
  const result = await build({
    ...(entryPoint === "socket.io-client"
      ? {
          stdin: {
            contents: 'export * from "socket.io-client";',
            resolveDir: fileURLToPath(new URL(".", import.meta.url)),
          },
        }
      : { entryPoints: [entryPoint] }),
    bundle: true,
    minify: true,
    format: "esm",
    platform: "browser",
    target: "es2020",
    write: false,
    external,
    legalComments: "none",
    conditions: ["@chat-backend/source"],
    logLevel: "error",
  });
  const code = result.outputFiles[0].contents;
  const gz = gzipSync(code, { level: 9 }).length;
  return { label, min: code.length, gzip: gz };
}

const kb = (n) => `${(n / 1024).toFixed(1)} KiB`;
const rows = [
  await measure("socket.io-client alone", [], "socket.io-client"),
  await measure("SDK + socket.io-client", []),
  await measure("SDK only (socket.io-client external)", ["socket.io-client"]),
  await measure("React package + SDK + socket.io-client", ["react"], reactEntry),
  await measure(
    "React package only (react, SDK external)",
    ["react", "@chat-backend/client"],
    reactEntry,
  ),
];
for (const r of rows) {
  console.log(
    `${r.label.padEnd(42)} min ${String(r.min).padStart(7)} B (${kb(r.min)})  min+gzip ${String(r.gzip).padStart(6)} B (${kb(r.gzip)})`,
  );
}

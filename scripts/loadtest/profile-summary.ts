/**
 * `npm run loadtest:profile -- <file.cpuprofile | folder>`
 *
 * Where a server node's CPU went, from a V8 CPU profile (`npm run loadtest -- --profile`): self
 * time grouped by package (node_modules/<name>), by this project's files, and by V8's own
 * categories (garbage collection, idle, program), then the heaviest functions. Reads only.
 */
import { readdir, readFile, stat } from "node:fs/promises";
import path from "node:path";

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

function groupOf(url: string, fn: string): string {
  if (!url) return fn.startsWith("(") ? fn : "(native)";
  const modules = url.lastIndexOf("node_modules/");
  if (modules >= 0) {
    const rest = url.slice(modules + "node_modules/".length).split("/");
    return rest[0]?.startsWith("@") ? `${rest[0]}/${rest[1]}` : (rest[0] ?? url);
  }
  // node:internal/… keeps its module: "node:internal" alone says nothing.
  if (url.startsWith("node:"))
    return url.startsWith("node:internal/") ? url : `node:${url.slice(5).split("/")[0]}`;
  const project = url.indexOf("/server/src/");
  if (project >= 0) return `server/src/${url.slice(project + 12).split("/")[0]}`;
  if (url.includes("/protocol/")) return "protocol";
  return path.basename(url);
}

async function summarize(file: string) {
  const profile = JSON.parse(await readFile(file, "utf8")) as Profile;
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const groups = new Map<string, number>();
  const functions = new Map<string, number>();
  let total = 0;
  profile.samples.forEach((id, i) => {
    const us = profile.timeDeltas[i] ?? 0;
    const node = byId.get(id);
    if (!node) return;
    const { functionName, url, lineNumber } = node.callFrame;
    const group = groupOf(url, functionName);
    total += us;
    groups.set(group, (groups.get(group) ?? 0) + us);
    const fn = `${functionName || "(anonymous)"} ${group}:${lineNumber + 1}`;
    functions.set(fn, (functions.get(fn) ?? 0) + us);
  });
  const idle = groups.get("(idle)") ?? 0;
  const busy = total - idle;
  const pct = (us: number) => `${((us / busy) * 100).toFixed(1)}%`.padStart(6);
  console.log(`\n${file}`);
  console.log(
    `  wall ${(total / 1e6).toFixed(1)} s, busy ${(busy / 1e6).toFixed(1)} s (shares below are of busy time)`,
  );
  console.log("  by package / area:");
  for (const [g, us] of [...groups]
    .filter(([g]) => g !== "(idle)")
    .sort((a, b) => b[1] - a[1])
    .slice(0, 18))
    console.log(`    ${pct(us)}  ${g}`);
  console.log("  heaviest functions (self time):");
  for (const [f, us] of [...functions]
    .filter(([f]) => !f.startsWith("(idle)"))
    .sort((a, b) => b[1] - a[1])
    .slice(0, 15))
    console.log(`    ${pct(us)}  ${f}`);
}

const target = process.argv[2];
if (!target) {
  console.error("usage: npm run loadtest:profile -- <file.cpuprofile | folder>");
  process.exit(2);
}
const files = (await stat(target)).isDirectory()
  ? (await readdir(target))
      .filter((f) => f.endsWith(".cpuprofile"))
      .map((f) => path.join(target, f))
  : [target];
for (const f of files) await summarize(f);

/**
 * Dependency hygiene that does not need the network. `npm audit` is the primary check, but its
 * endpoint is not reachable from every machine (it answers 405 on this project's CI), so this
 * test pins the floor of every package with a known advisory on the exposed surface: every copy
 * of it in the lock file must be at or above the version that fixed it. docs/security.md lists
 * the advisories and the exceptions.
 */
import { readFile } from "node:fs/promises";
import { describe, expect, test } from "vitest";

/** Package → the lowest version that carries every fix we know of, and why. */
const FLOORS: Record<string, { min: string; why: string }> = {
  "socket.io": {
    min: "4.6.2",
    why: "GHSA-25hc-qcg6-38wj (CVE-2024-38355): unhandled 'error' event",
  },
  "engine.io": { min: "6.4.2", why: "GHSA-q9mw-68c2-j6m5 (CVE-2023-31125): uncaught exception" },
  "socket.io-parser": { min: "4.2.6", why: "GHSA-677m-j7p3-52f9: unbounded binary attachments" },
  ws: { min: "8.17.1", why: "GHSA-3h5v-q93c-6h6q (CVE-2024-37890): DoS with many headers" },
  "drizzle-orm": {
    min: "0.45.2",
    why: "GHSA-gpj5-g38j-94v9 (CVE-2026-39356): identifier escaping",
  },
};

function compare(a: string, b: string): number {
  const pa = a.split(/[.+-]/).slice(0, 3).map(Number);
  const pb = b.split(/[.+-]/).slice(0, 3).map(Number);
  for (let i = 0; i < 3; i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

type Lock = { packages: Record<string, { version?: string; dev?: boolean }> };

async function installedCopies(): Promise<Map<string, { path: string; version: string }[]>> {
  const lock = JSON.parse(await readFile("package-lock.json", "utf8")) as Lock;
  const copies = new Map<string, { path: string; version: string }[]>();
  for (const [path, entry] of Object.entries(lock.packages)) {
    const name = path.split("node_modules/").at(-1);
    if (!name || !entry.version || !(name in FLOORS)) continue;
    copies.set(name, [...(copies.get(name) ?? []), { path, version: entry.version }]);
  }
  return copies;
}

describe("dependency floors (known advisories)", () => {
  test("compare orders versions numerically", () => {
    expect(compare("4.2.10", "4.2.6")).toBeGreaterThan(0);
    expect(compare("4.2.6", "4.2.6")).toBe(0);
    expect(compare("0.44.7", "0.45.2")).toBeLessThan(0);
  });

  test("every copy of each package in the lock file is at or above its fixed version", async () => {
    const copies = await installedCopies();
    for (const [name, { min, why }] of Object.entries(FLOORS)) {
      const found = copies.get(name) ?? [];
      expect(found.length, `${name} is not in the lock file`).toBeGreaterThan(0);
      for (const { path, version } of found) {
        expect(compare(version, min), `${path}@${version} < ${min}: ${why}`).toBeGreaterThanOrEqual(
          0,
        );
      }
    }
  });

  test("the lock file pins what node_modules holds", async () => {
    const copies = await installedCopies();
    for (const name of Object.keys(FLOORS)) {
      for (const { path, version } of copies.get(name) ?? []) {
        const pkg = JSON.parse(await readFile(`${path}/package.json`, "utf8")) as {
          version: string;
        };
        expect(pkg.version, path).toBe(version);
      }
    }
  });
});

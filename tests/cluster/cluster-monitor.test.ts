/**
 * The cluster monitor's judgments on a real Redis: a node whose own process was paused (a long
 * garbage collection, a throttled CPU) reads the heartbeats that waited for it before it calls
 * anything silent, while a peer that really went silent is still given up.
 */
import { randomBytes } from "node:crypto";
import { pino } from "pino";
import { afterEach, describe, expect, test } from "vitest";
import { ResyncReason } from "../../protocol/constants.js";
import { ClusterMonitor } from "../../server/src/cluster-monitor.js";
import { connectRedis, type RedisClient } from "../../server/src/redis/client.js";
import { eventually, testRedisUrl } from "../helpers/server.js";

const HEARTBEAT_MS = 100;
const logger = pino({ level: "silent" });
const open: RedisClient[] = [];
const monitors: ClusterMonitor[] = [];

afterEach(async () => {
  await Promise.all(monitors.splice(0).map((m) => m.close()));
  await Promise.all(open.splice(0).map((c) => c.quit().catch(() => c.disconnect())));
});

/** A monitor on its own two connections, and the resyncs it asks for. */
async function node(channel: string) {
  const pub = connectRedis({ url: testRedisUrl }, "commands");
  const sub = connectRedis({ url: testRedisUrl }, "subscriber");
  // Quiet while a test cuts a connection on purpose.
  pub.on("error", () => {});
  sub.on("error", () => {});
  open.push(pub, sub);
  await Promise.all([pub, sub].map((c) => new Promise((resolve) => c.once("ready", resolve))));
  const monitor = new ClusterMonitor({ pub, sub, channel, heartbeatMs: HEARTBEAT_MS, logger });
  monitors.push(monitor);
  const resyncs: ResyncReason[] = [];
  monitor.onResync((reason) => resyncs.push(reason));
  monitor.start();
  return { monitor, pub, sub, resyncs };
}

/**
 * Counts the heartbeats on the channel, by node, as a third subscriber sees them: what the
 * monitors receive too, so a test waits for beats instead of sleeping.
 */
async function watch(channel: string) {
  const sub = connectRedis({ url: testRedisUrl }, "subscriber");
  open.push(sub);
  const beats = new Map<string, number>();
  sub.on("message", (_from: string, raw: string) => {
    const { node } = JSON.parse(raw) as { node: string };
    beats.set(node, (beats.get(node) ?? 0) + 1);
  });
  await sub.subscribe(channel);
  /** Resolves once every one of `monitors` has beaten `n` more times from now. */
  return async (monitors: ClusterMonitor[], n: number) => {
    const from = new Map(monitors.map((m) => [m.nodeId, beats.get(m.nodeId) ?? 0]));
    await eventually(() => {
      for (const m of monitors) {
        expect((beats.get(m.nodeId) ?? 0) - (from.get(m.nodeId) ?? 0)).toBeGreaterThanOrEqual(n);
      }
    }, 10_000);
  };
}

function busyWait(ms: number): void {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    // the whole process is stuck, as in a long pause
  }
}

describe("the cluster monitor", () => {
  test("a process paused for ten beats resyncs nothing: the heartbeats waited for it", async () => {
    const channel = `cm-${randomBytes(4).toString("hex")}:cluster-heartbeat`;
    const beats = await watch(channel);
    const x = await node(channel);
    const y = await node(channel);
    // Both know themselves and each other (a few beats each way).
    await beats([x.monitor, y.monitor], 3);
    busyWait(HEARTBEAT_MS * 10);
    // More beats after the pause than the 4 after which a silent peer or a silent own link
    // counts as lost: any resync would have been asked for by now.
    await beats([x.monitor, y.monitor], 6);
    expect(x.resyncs).toEqual([]);
    expect(y.resyncs).toEqual([]);
  });

  test("a peer that goes silent is still given up, paused or not", async () => {
    const channel = `cm-${randomBytes(4).toString("hex")}:cluster-heartbeat`;
    const beats = await watch(channel);
    const x = await node(channel);
    const y = await node(channel);
    await beats([x.monitor, y.monitor], 3);
    // Y dies without a goodbye: its connections drop and its beats stop.
    y.pub.disconnect();
    y.sub.disconnect();
    await y.monitor.close();
    busyWait(HEARTBEAT_MS * 10);
    await eventually(() => expect(x.resyncs).toEqual([ResyncReason.PEER_LOST]), 5000);
  });
});

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

function busyWait(ms: number): void {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    // the whole process is stuck, as in a long pause
  }
}

const settle = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("the cluster monitor", () => {
  test("a process paused for ten beats resyncs nothing: the heartbeats waited for it", async () => {
    const channel = `cm-${randomBytes(4).toString("hex")}:cluster-heartbeat`;
    const x = await node(channel);
    const y = await node(channel);
    // Both know themselves and each other (a few beats each way).
    await settle(HEARTBEAT_MS * 5);
    busyWait(HEARTBEAT_MS * 10);
    // Longer than the 4 beats after which a silent peer or a silent own link counts as lost.
    await settle(HEARTBEAT_MS * 8);
    expect(x.resyncs).toEqual([]);
    expect(y.resyncs).toEqual([]);
  });

  test("a peer that goes silent is still given up, paused or not", async () => {
    const channel = `cm-${randomBytes(4).toString("hex")}:cluster-heartbeat`;
    const x = await node(channel);
    const y = await node(channel);
    await settle(HEARTBEAT_MS * 5);
    // Y dies without a goodbye: its connections drop and its beats stop.
    y.pub.disconnect();
    y.sub.disconnect();
    await y.monitor.close();
    busyWait(HEARTBEAT_MS * 10);
    await eventually(() => expect(x.resyncs).toEqual([ResyncReason.PEER_LOST]), 5000);
  });
});

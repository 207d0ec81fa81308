/**
 * Cross-node convergence. The Redis adapter's events are fire-and-forget: while Redis is down,
 * for the seconds ioredis takes to reconnect, or when a node cannot publish (or dies before it
 * does), events are lost, and a device that stays connected would never learn it missed them.
 * This monitor notices every such window and tells the node to resynchronise its sockets
 * (`connection:resync`, docs/protocol.md); the devices then re-read what they show.
 *
 * Every node publishes a heartbeat every `heartbeatMs` on a channel of its own, through the same
 * two connections as the adapter's events (so on the same path, in the same order):
 * `{ node, seq, failures }`, where `seq` counts heartbeats attempted and `failures` publishes of
 * this node that failed (events and heartbeats). Then:
 * - **this node's link**: its own heartbeats come back through Redis. When the link broke (a
 *   connection closed, a publish failed) or stalled (no own heartbeat for `lostAfter` beats),
 *   the first own heartbeat that comes back again means events may have been missed meanwhile:
 *   CLUSTER_RECONNECTED. Proving the link with an own heartbeat, rather than trusting ioredis'
 *   `ready`, means the resubscription is in effect before the devices re-read.
 * - **a peer's gap**: a peer's heartbeat that skips a `seq` or shows more `failures` means
 *   events from it were lost on the way or never sent: PEER_EVENTS_LOST.
 * - **a lost peer**: a peer silent for `lostAfter` beats crashed or is cut off; what it had not
 *   published is lost: PEER_LOST (and a gap when it comes back).
 * Peer findings while this node's own link is broken are left to the CLUSTER_RECONNECTED that
 * follows, which covers them. Triggers within a few milliseconds are merged into one resync; a
 * trigger after a resync always causes another (what it reports may be newer than that resync).
 */
import { randomUUID } from "node:crypto";
import { ResyncReason } from "../../protocol/constants.js";
import type { Logger } from "./logger.js";
import type { RedisClient } from "./redis/client.js";

/** Heartbeats a peer (or this node's own) may miss before it counts as lost. */
export const LOST_AFTER_BEATS = 4;
/** After a reconnect, a second resync this many beats later (see onHeartbeat). */
const SETTLE_BEATS = 2;

/** A tick this many beats after the previous one means this process was paused (see tick). */
const PAUSED_AFTER_BEATS = 2;

/** Triggers this close together are one resync. */
const MERGE_MS = 50;
/** A lost peer is forgotten after this long (a node that restarts has a new id). */
const FORGET_AFTER_MS = 60 * 60 * 1000;

interface Heartbeat {
  node: string;
  seq: number;
  failures: number;
  /** A graceful shutdown: forget the node without a resync. */
  bye?: true;
}

interface Peer {
  seq: number;
  failures: number;
  lastSeen: number;
  lost: boolean;
}

export interface ClusterMonitorOptions {
  pub: RedisClient;
  sub: RedisClient;
  /** The heartbeat channel (prefixed like every channel of the deployment). */
  channel: string;
  /** Milliseconds between heartbeats (CLUSTER_HEARTBEAT_MS). */
  heartbeatMs: number;
  logger: Logger;
}

function parseHeartbeat(raw: string): Heartbeat | undefined {
  try {
    const v = JSON.parse(raw) as Partial<Heartbeat> | null;
    if (
      v &&
      typeof v.node === "string" &&
      v.node.length <= 100 &&
      Number.isSafeInteger(v.seq) &&
      Number.isSafeInteger(v.failures)
    ) {
      return {
        node: v.node,
        seq: v.seq as number,
        failures: v.failures as number,
        ...(v.bye ? { bye: true } : {}),
      };
    }
  } catch {
    // not a heartbeat
  }
  return undefined;
}

export class ClusterMonitor {
  /** This process's id among the nodes. */
  readonly nodeId = randomUUID();
  private seq = 0;
  private failures = 0;
  private readonly peers = new Map<string, Peer>();
  /** An own heartbeat has come back at least once. */
  private linked = false;
  /** The link broke or stalled since the last own heartbeat came back. */
  private broken = false;
  private lastOwnEcho = 0;
  private lastTick = Date.now();
  private timer: NodeJS.Timeout | undefined;
  private mergeTimer: NodeJS.Timeout | undefined;
  private readonly pending = new Set<ResyncReason>();
  private readonly listeners = new Set<(reason: ResyncReason) => void>();
  private closed = false;
  private readonly lostAfterMs: number;

  constructor(private readonly options: ClusterMonitorOptions) {
    this.lostAfterMs = options.heartbeatMs * LOST_AFTER_BEATS;
  }

  /** Calls `listener` whenever this node's sockets must resynchronise; returns an unsubscribe. */
  onResync(listener: (reason: ResyncReason) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  start(): void {
    const { pub, sub, channel, logger } = this.options;
    sub.on("message", (from: string, message: string) => {
      if (from === channel) this.onHeartbeat(message);
    });
    sub.subscribe(channel).catch((err: unknown) => {
      // ioredis resubscribes on every reconnect; a failure here is retried that way.
      logger.warn({ err: String(err) }, "cluster heartbeat: subscribe failed");
    });
    for (const client of [pub, sub]) {
      client.on("close", () => this.linkBroken());
      // Back: prove the link at once rather than at the next beat.
      client.on("ready", () => this.beat());
    }
    this.lastTick = Date.now();
    this.timer = setInterval(() => this.tick(), this.options.heartbeatMs);
    this.timer.unref();
    this.beat();
  }

  /** A publish of this node failed (an event or a heartbeat): peers learn it from `failures`. */
  publishFailed(): void {
    this.failures++;
    this.linkBroken();
  }

  /**
   * One of this node's links lost events without the connections above closing (on a Redis
   * Cluster: a master that held some of the sharded adapter's channels failed over).
   */
  linkLost(): void {
    this.linkBroken();
  }

  /** Stops the heartbeats and tells the peers this node leaves (so they do not resync). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    clearTimeout(this.mergeTimer);
    this.pending.clear();
    const bye: Heartbeat = {
      node: this.nodeId,
      seq: ++this.seq,
      failures: this.failures,
      bye: true,
    };
    // Bounded: a stalled Redis must not hold up the shutdown.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      this.options.pub.publish(this.options.channel, JSON.stringify(bye)).catch(() => 0),
      new Promise((resolve) => {
        timer = setTimeout(resolve, 500);
      }),
    ]);
    clearTimeout(timer);
  }

  private linkBroken(): void {
    if (this.linked && !this.closed) this.broken = true;
  }

  private beat(): void {
    if (this.closed) return;
    const hb: Heartbeat = { node: this.nodeId, seq: ++this.seq, failures: this.failures };
    // The publish wrapper of redis-adapter.ts counts a failure (publishFailed) and resolves 0.
    void this.options.pub.publish(this.options.channel, JSON.stringify(hb)).catch(() => 0);
  }

  private tick(): void {
    const now = Date.now();
    const sinceTick = now - this.lastTick;
    this.lastTick = now;
    // This timer ran late: the process itself was paused (a long garbage collection, a starved
    // or throttled CPU). The heartbeats that reached it meanwhile are still unread, so silence
    // measured now says nothing about the link or the peers; the next beat judges, once they
    // are read. (Redis buffers them for a paused subscriber; losing them closes the connection.)
    if (sinceTick > this.options.heartbeatMs * PAUSED_AFTER_BEATS) {
      this.options.logger.warn({ pausedMs: sinceTick }, "cluster heartbeat: this node was paused");
      this.beat();
      return;
    }
    if (this.linked && !this.broken && now - this.lastOwnEcho > this.lostAfterMs) {
      this.options.logger.warn("cluster heartbeat: own heartbeats do not come back");
      this.broken = true;
    }
    for (const [node, peer] of this.peers) {
      const silent = now - peer.lastSeen;
      if (silent > FORGET_AFTER_MS) {
        this.peers.delete(node);
      } else if (!peer.lost && silent > this.lostAfterMs) {
        peer.lost = true;
        if (!this.broken) {
          this.options.logger.warn(
            { peer: node, silentMs: silent },
            "cluster heartbeat: peer lost",
          );
          this.trigger(ResyncReason.PEER_LOST);
        }
      }
    }
    this.beat();
  }

  private onHeartbeat(raw: string): void {
    if (this.closed) return;
    const hb = parseHeartbeat(raw);
    if (!hb) return;
    const now = Date.now();
    if (hb.node === this.nodeId) {
      this.lastOwnEcho = now;
      this.linked = true;
      if (this.broken) {
        this.broken = false;
        this.trigger(ResyncReason.CLUSTER_RECONNECTED);
        // The echo proves the heartbeat channel, not that every room channel is subscribed
        // again: ioredis restores those on its own, a few round trips later, and a broadcast
        // published in between is lost without any failure to count. A second resync once
        // that window is over covers it.
        const settle = setTimeout(
          () => this.trigger(ResyncReason.CLUSTER_RECONNECTED),
          this.options.heartbeatMs * SETTLE_BEATS,
        );
        settle.unref();
      }
      return;
    }
    const peer = this.peers.get(hb.node);
    const gap =
      peer !== undefined && (peer.lost || hb.seq !== peer.seq + 1 || hb.failures !== peer.failures);
    if (hb.bye) this.peers.delete(hb.node);
    else
      this.peers.set(hb.node, { seq: hb.seq, failures: hb.failures, lastSeen: now, lost: false });
    // While this node's own link is broken, the resync when it is back covers the gap.
    if (gap && !this.broken) {
      this.options.logger.warn(
        { peer: hb.node, seq: hb.seq, expected: (peer?.seq ?? 0) + 1, failures: hb.failures },
        "cluster heartbeat: events from a peer were lost",
      );
      this.trigger(ResyncReason.PEER_EVENTS_LOST);
    }
  }

  private trigger(reason: ResyncReason): void {
    this.pending.add(reason);
    this.mergeTimer ??= setTimeout(() => {
      this.mergeTimer = undefined;
      const [first] = this.pending;
      this.pending.clear();
      if (!first || this.closed) return;
      for (const listener of this.listeners) listener(first);
    }, MERGE_MS);
  }
}

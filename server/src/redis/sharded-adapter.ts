/**
 * The sharded adapter (REDIS_ADAPTER=sharded): Redis 7 sharded pub/sub (SPUBLISH/SSUBSCRIBE)
 * in the "dynamic" subscription mode, so a node subscribes to one channel per room that has
 * one of its sockets and receives only those rooms' broadcasts (docs/deployment.md, "Adapter").
 *
 * Why "dynamic": every broadcast of this product goes to one named room (`user:<id>`,
 * `session:<chatId>`, `clerk-session:<id>`), which dynamic mode puts on the room's own
 * channel. "static" puts every broadcast on one channel (every node receives everything, and
 * one shard carries it all); "dynamic-private" also subscribes per socket id, which only pays
 * for `socket.emit` to remote sockets (redis-adapter issue 524), and this product never does
 * that: it emits to remote sockets only through their user or chat rooms. Everything else
 * (socketsLeave, disconnectSockets, fetchSockets) travels on the namespace's main channel,
 * which every node subscribes to, as in the classic adapter.
 *
 * A subscription is asynchronous: a room just created on this node receives broadcasts only
 * once Redis confirmed its SSUBSCRIBE. `whenSubscribed(room)` waits for that, so a command that
 * joins a room and then reads a snapshot (`chat:open`) cannot miss what is published between.
 */
import { createShardedAdapter } from "@socket.io/redis-adapter";
import type { Adapter } from "socket.io-adapter";
import type { Logger } from "../logger.js";
import type { RedisClient } from "./client.js";

/**
 * A room no socket joins. A broadcast to it and another room is sent on the namespace's main
 * channel (the dynamic mode gives a room its own channel only for one-room broadcasts), which
 * is where cluster-wide operations such as disconnectSockets travel: an event that must reach
 * every node before such an operation is sent this way, and keeps its order on every node.
 */
export const MAIN_CHANNEL_ROOM = "\u0000main";

/** An adapter that can say when it receives a room's broadcasts. */
export interface SubscribedAdapter {
  /** Resolves once this node receives the broadcasts of `room` (at once when nothing is pending). */
  whenSubscribed(room: string): Promise<void>;
}

/**
 * How long `whenSubscribed` waits at most. While Redis is down a subscription waits for it to
 * come back; a command must not: it goes on, as with the classic adapter, and the cluster
 * monitor has the devices resync once Redis is back.
 */
export const SUBSCRIBE_WAIT_MS = 1000;

/** Waits for `adapter` to be subscribed to `room`, if it is an adapter that subscribes per room. */
export function whenSubscribed(adapter: unknown, room: string): Promise<void> {
  const a = adapter as Partial<SubscribedAdapter> | undefined;
  const subscribed = a?.whenSubscribed?.(room);
  if (!subscribed) return Promise.resolve();
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    subscribed,
    new Promise<void>((resolve) => {
      timer = setTimeout(resolve, SUBSCRIBE_WAIT_MS);
    }),
  ]).finally(() => clearTimeout(timer));
}

/**
 * Wraps the subscriber so that every SSUBSCRIBE's reply is remembered by channel (and its
 * failure logged instead of rejecting unhandled), then builds the adapter.
 */
export function shardedAdapter(
  pub: RedisClient,
  sub: RedisClient,
  channelPrefix: string,
  logger: Logger,
): (nsp: unknown) => Adapter {
  const pending = new Map<string, Promise<void>>();
  const ssubscribe = sub.ssubscribe.bind(sub) as (channel: string) => Promise<unknown>;
  (sub.ssubscribe as unknown) = (channel: string) => {
    const done = ssubscribe(channel).then(
      () => {},
      (err: unknown) => {
        logger.warn({ channel, err: String(err) }, "redis ssubscribe failed");
      },
    );
    pending.set(channel, done);
    void done.finally(() => {
      if (pending.get(channel) === done) pending.delete(channel);
    });
    return done;
  };
  const make = createShardedAdapter(pub, sub, { channelPrefix, subscriptionMode: "dynamic" });
  // Socket.IO calls it with `new`: a function (not an arrow) that returns the adapter.
  return function ShardedAdapter(nsp: unknown) {
    const adapter = make(nsp as never) as unknown as Adapter & SubscribedAdapter;
    const name = (nsp as { name: string }).name;
    adapter.whenSubscribed = (room) =>
      pending.get(`${channelPrefix}#${name}#${room}#`) ?? Promise.resolve();
    return adapter;
  };
}

import { DisconnectReason } from "../../../protocol/constants.js";
import type { ChatSocket } from "./types.js";

/**
 * Disconnects a socket whose token expired more than `graceMs` ago without an `auth:refresh`.
 * One timer per socket, rescheduled on every refresh and cleared on disconnect.
 */
export class TokenExpiry {
  private readonly timers = new WeakMap<ChatSocket, NodeJS.Timeout>();

  constructor(private readonly graceMs: number) {}

  schedule(socket: ChatSocket): void {
    this.clear(socket);
    const delay = Math.max(0, socket.data.tokenExpiresAt + this.graceMs - Date.now());
    // setTimeout overflows past ~24.8 days; tokens never live that long, but clamp anyway.
    const timer = setTimeout(() => this.expire(socket), Math.min(delay, 2 ** 31 - 1));
    timer.unref();
    this.timers.set(socket, timer);
  }

  clear(socket: ChatSocket): void {
    const timer = this.timers.get(socket);
    if (timer) clearTimeout(timer);
    this.timers.delete(socket);
  }

  private expire(socket: ChatSocket): void {
    if (Date.now() < socket.data.tokenExpiresAt + this.graceMs) {
      this.schedule(socket);
      return;
    }
    socket.emit("connection:closing", {
      reason: DisconnectReason.TOKEN_EXPIRED,
      message: "The session token expired and was not refreshed",
      reconnect: true,
    });
    socket.disconnect(true);
  }
}

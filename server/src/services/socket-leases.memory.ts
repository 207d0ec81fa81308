/** Socket leases of a single node: its own sockets per user (see socket-leases.ts). */
import type { SocketLeases } from "./socket-leases.js";

export class MemorySocketLeases implements SocketLeases {
  /** This node's open sockets, by user. */
  protected readonly open = new Map<string, Set<string>>();

  constructor(protected readonly max: number) {}

  reserve(userId: string, socketId: string): boolean {
    const local = this.open.get(userId) ?? new Set<string>();
    if (local.size >= this.max) return false;
    local.add(socketId);
    this.open.set(userId, local);
    return true;
  }

  async confirm(_userId: string, _socketId: string): Promise<boolean> {
    return true;
  }

  release(userId: string, socketId: string): void {
    const local = this.open.get(userId);
    local?.delete(socketId);
    if (local?.size === 0) this.open.delete(userId);
  }

  usersWithSockets(): number {
    return this.open.size;
  }

  close(): void {}
}

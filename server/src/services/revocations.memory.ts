/** Revocations in this node's memory: the store of a single node (see revocations.ts). */
import { ExpiringMap } from "../expiring-map.js";
import { REVOCATION_TTL_MS, type RevocationKind, type Revocations } from "./revocations.js";

/** Most revocations one node remembers itself (a shared store holds them all). */
export const MAX_REMEMBERED = 100_000;

export class MemoryRevocations implements Revocations {
  private readonly memory = new ExpiringMap<string, true>(MAX_REMEMBERED);

  async revoke(kind: RevocationKind, id: string): Promise<void> {
    this.memory.set(`${kind}:${id}`, true, Date.now() + REVOCATION_TTL_MS);
  }

  async lift(kind: RevocationKind, id: string): Promise<void> {
    this.memory.delete(`${kind}:${id}`);
  }

  async revoked(userId: string, sessionId: string | null): Promise<RevocationKind | undefined> {
    if (this.memory.get(`user:${userId}`)) return "user";
    if (sessionId && this.memory.get(`session:${sessionId}`)) return "session";
    return undefined;
  }

  async isRevoked(userId: string, sessionId: string | null): Promise<boolean> {
    return (await this.revoked(userId, sessionId)) !== undefined;
  }
}

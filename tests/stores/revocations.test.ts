/**
 * The revocation store's contract, one suite for every backend (memory, one Redis, a Redis
 * Cluster; unique key prefix): a deleted user and a revoked session are remembered, the user
 * first; a lift ends it; on a shared backend what one node revoked every node sees (on memory,
 * only the node itself), and a node keeps what it revoked itself when the backend is gone.
 */
import { randomBytes } from "node:crypto";
import { afterAll, describe, expect, test } from "vitest";
import type { RedisClient } from "../../server/src/redis/client.js";
import { createRevocations } from "../../server/src/services/revocations.js";
import { stopBackends, storeBackends } from "../helpers/backends.js";

const prefix = `test-rev-${randomBytes(4).toString("hex")}`;
const clients: RedisClient[] = [];
afterAll(async () => {
  for (const c of clients) c.disconnect();
  await stopBackends();
});

describe.each(storeBackends)("$name revocations", (backend) => {
  /** Two nodes' stores on this backend. */
  async function twoNodes() {
    const client = await backend.client();
    if (client) clients.push(client);
    return [createRevocations(client, prefix), createRevocations(client, prefix)] as const;
  }
  const id = (s: string) => `${s}_${randomBytes(4).toString("hex")}`;

  test("a deleted user and a revoked session are remembered, the user first; a lift ends it", async () => {
    const [store] = await twoNodes();
    const [user, session, other] = [id("user"), id("sess"), id("sess")];
    expect(await store.revoked(user, session)).toBeUndefined();
    await store.revoke("session", session);
    expect(await store.revoked(user, session)).toBe("session");
    expect(await store.revoked(user, other)).toBeUndefined();
    await store.revoke("user", user);
    expect(await store.revoked(user, session)).toBe("user");
    expect(await store.isRevoked(user, null)).toBe(true);
    await store.lift("user", user);
    expect(await store.revoked(user, null)).toBeUndefined();
    expect(await store.revoked(user, session)).toBe("session");
  });

  test(
    backend.shared
      ? "what one node revoked the other sees, and a lift on it ends it for both"
      : "what one node revoked only that node knows",
    async () => {
      const [a, b] = await twoNodes();
      const [user, session] = [id("user"), id("sess")];
      await a.revoke("user", user);
      await a.revoke("session", session);
      expect(await a.revoked(user, null)).toBe("user");
      expect(await b.revoked(user, null)).toBe(backend.shared ? "user" : undefined);
      // Both keys at once (in two slots of a cluster): the user first, then the session.
      expect(await b.revoked(user, id("sess"))).toBe(backend.shared ? "user" : undefined);
      expect(await b.revoked(id("user"), session)).toBe(backend.shared ? "session" : undefined);
      if (backend.shared) {
        await b.lift("user", user);
        expect(await a.revoked(user, null)).toBeUndefined();
      }
    },
  );

  test("a node keeps what it revoked itself when its backend is gone", async () => {
    const client = await backend.client();
    const store = createRevocations(client, prefix);
    const session = id("sess");
    await store.revoke("session", session);
    client?.disconnect();
    expect(await store.revoked(id("user"), session)).toBe("session");
  });
});

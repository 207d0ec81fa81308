/**
 * `npm run token -- <userId> [ttlSeconds]`: prints a development token for any user id,
 * signed with the same local key the server verifies with. Development only.
 */
import { loadOrCreateDevKeys, mintSessionToken } from "../server/src/auth/dev-keys.js";
import { loadConfig } from "../server/src/config.js";

const [userId, ttl] = process.argv.slice(2);
if (!userId || !/^[A-Za-z0-9_-]{1,64}$/.test(userId)) {
  console.error(
    "usage: npm run token -- <userId> [ttlSeconds]   (userId: letters, digits, _ or -)",
  );
  process.exit(2);
}
const config = loadConfig();
if (config.env === "production" || config.auth.mode !== "development") {
  console.error(
    "npm run token is for development auth only (no Clerk keys, NODE_ENV not production)",
  );
  process.exit(2);
}
const keys = await loadOrCreateDevKeys(config.dataDir);
console.log(
  await mintSessionToken(keys.privateKeyPem, userId, { ttlSeconds: Number(ttl ?? 3600) }),
);

/**
 * Every connection state change carries a reason (`client.connectionStatus`, the `state`
 * event's third argument): a code and a message, against a real server.
 */
import { afterAll, afterEach, beforeAll, expect, it } from "vitest";
import type { ConnectionStatus } from "../../client-sdk/src/index.js";
import { startTestServer, type TestServer, tokenFor } from "../helpers/server.js";
import { clients, until, untilState } from "./helpers.js";

let server: TestServer;
const sdk = clients(() => server);

beforeAll(async () => {
  server = await startTestServer();
});
afterEach(() => sdk.closeAll());
afterAll(() => server?.close());

it("online, offline and back, and signed out: each with its code", async () => {
  const c = sdk.create("sdk_status");
  const seen: [string, string, ConnectionStatus][] = [];
  c.on("state", (state, previous, status) => seen.push([state, previous, status]));
  expect(c.connectionStatus.getSnapshot()).toMatchObject({ state: "connecting", code: "STARTING" });
  await untilState(c, "online");
  expect(c.connectionStatus.getSnapshot()).toEqual({
    state: "online",
    code: "CONNECTED",
    message: "Connected",
  });

  c.setNetworkAvailable(false);
  expect(c.connectionStatus.getSnapshot()).toMatchObject({
    state: "offline",
    code: "NETWORK_UNAVAILABLE",
  });
  c.setNetworkAvailable(true);
  await untilState(c, "online");
  expect(seen.map(([s, p, st]) => [s, p, st.code])).toEqual([
    ["online", "connecting", "CONNECTED"],
    ["offline", "online", "NETWORK_UNAVAILABLE"],
    ["online", "offline", "CONNECTED"],
  ]);
});

it("a refused token and a null token sign out with the server's code or NO_TOKEN", async () => {
  const wrongParty = sdk.create("sdk_status_party", {
    getToken: () => tokenFor("sdk_status_party", { authorizedParty: "https://evil.example" }),
  });
  const refused = await until(
    wrongParty.connectionStatus,
    (s) => s.state === "signedOut",
    10_000,
    "signed out",
  );
  expect(refused.code).toBe("TOKEN_WRONG_PARTY");
  expect(refused.message).toMatch(/TOKEN_WRONG_PARTY/);

  const nobody = sdk.create("sdk_status_null", { getToken: async () => null });
  const out = await until(nobody.connectionStatus, (s) => s.state === "signedOut", 10_000);
  expect(out).toEqual({
    state: "signedOut",
    code: "NO_TOKEN",
    message: "getToken() returned null",
  });
});

/** Configuration: parsed once, and production refuses to run without real Clerk keys. */
import { spawnSync } from "node:child_process";
import { describe, expect, test } from "vitest";
import { ConfigError, loadConfig } from "../../server/src/config.js";
import { testKeys } from "../helpers/server.js";

const pem = testKeys.publicKeyPem;

describe("loadConfig", () => {
  test("no configuration: development auth, embedded database, in-memory adapter", () => {
    const c = loadConfig({});
    expect(c.auth).toEqual({ mode: "development" });
    expect(c.databaseUrl).toBeUndefined();
    expect(c.redisUrl).toBeUndefined();
    expect(c.port).toBe(3000);
    expect(c.host).toBe("127.0.0.1");
    expect(c.tokenGraceSeconds).toBeLessThanOrEqual(30);
  });

  test("flood limits and proxy trust have safe defaults", () => {
    const c = loadConfig({});
    expect(c.rateLimits).toMatchObject({
      connectionsPerAddressPerMinute: 300,
      commandsPerSecond: 20,
      commandBurst: 60,
    });
    // X-Forwarded-For is ignored unless proxies are declared.
    expect(c.trustProxy).toBe(0);
    const set = loadConfig({
      RATE_LIMIT_CONNECTIONS_PER_IP_PER_MINUTE: "50",
      RATE_LIMIT_COMMANDS_PER_SECOND: "2.5",
      RATE_LIMIT_COMMAND_BURST: "10",
      TRUST_PROXY: "1",
    });
    expect(set.rateLimits).toMatchObject({
      connectionsPerAddressPerMinute: 50,
      commandsPerSecond: 2.5,
      commandBurst: 10,
    });
    expect(set.trustProxy).toBe(1);
  });

  test("browser origins: loopback in development; the authorized parties in production", () => {
    expect(loadConfig({}).origins).toEqual({ allowed: [], loopback: true });
    const prod = {
      NODE_ENV: "production",
      CLERK_JWT_KEY: pem,
      CLERK_AUTHORIZED_PARTIES: "https://app.example.com",
      DATABASE_URL: "postgres://x@h/db",
    };
    expect(loadConfig(prod).origins).toEqual({
      allowed: ["https://app.example.com"],
      loopback: false,
    });
    // CORS_ORIGINS replaces the default, normalized (case, default port, trailing slash).
    expect(
      loadConfig({ ...prod, CORS_ORIGINS: "https://A.example.com:443/, http://b.example.com:8080" })
        .origins,
    ).toEqual({ allowed: ["https://a.example.com", "http://b.example.com:8080"], loopback: false });
    expect(loadConfig({ CORS_ORIGINS: "https://app.example.com" }).origins).toEqual({
      allowed: ["https://app.example.com"],
      loopback: true,
    });
  });

  test("production without Clerk keys is refused, naming the variable", () => {
    expect(() => loadConfig({ NODE_ENV: "production", DATABASE_URL: "postgres://x@h/db" })).toThrow(
      /CLERK_JWT_KEY/,
    );
  });

  test("production without authorized parties or a database is refused", () => {
    expect(() =>
      loadConfig({ NODE_ENV: "production", CLERK_JWT_KEY: pem, DATABASE_URL: "postgres://x@h/db" }),
    ).toThrow(/CLERK_AUTHORIZED_PARTIES/);
    expect(() =>
      loadConfig({
        NODE_ENV: "production",
        CLERK_JWT_KEY: pem,
        CLERK_AUTHORIZED_PARTIES: "https://a.example",
      }),
    ).toThrow(/DATABASE_URL/);
  });

  test("production with real configuration uses Clerk verification", () => {
    const c = loadConfig({
      NODE_ENV: "production",
      CLERK_JWT_KEY: pem.replace(/\n/g, "\\n"),
      CLERK_AUTHORIZED_PARTIES: "https://a.example, https://b.example",
      DATABASE_URL: "postgres://x@h/db",
    });
    expect(c.auth).toEqual({
      mode: "clerk",
      jwtKey: pem,
      secretKey: undefined,
      authorizedParties: ["https://a.example", "https://b.example"],
    });
    expect(c.host).toBe("0.0.0.0");
  });

  test("Redis: one Redis or a cluster's seed nodes, and the sharded adapter by default", () => {
    expect(loadConfig({ REDIS_URL: "redis://r:6379" })).toMatchObject({
      redisUrl: "redis://r:6379",
      redisCluster: undefined,
      redisAdapter: "sharded",
    });
    const c = loadConfig({
      REDIS_CLUSTER_NODES: "10.0.0.1:7000, rediss://app:s%40cret@[::1]:7001",
      REDIS_ADAPTER: "classic",
    });
    expect(c.redisAdapter).toBe("classic");
    expect(c.redisCluster).toEqual({
      nodes: [
        { host: "10.0.0.1", port: 7000 },
        { host: "::1", port: 7001 },
      ],
      tls: true,
      username: "app",
      password: "s@cret",
    });
  });

  test.each([
    [{ PORT: "abc" }, /PORT/],
    [{ DATABASE_URL: "mysql://x" }, /DATABASE_URL/],
    [{ REDIS_URL: "http://x" }, /REDIS_URL/],
    [{ REDIS_CLUSTER_NODES: "10.0.0.1" }, /REDIS_CLUSTER_NODES: "10.0.0.1" is not host:port/],
    [{ REDIS_CLUSTER_NODES: "http://a:1" }, /REDIS_CLUSTER_NODES/],
    [{ REDIS_CLUSTER_NODES: "a:1", REDIS_URL: "redis://b:2" }, /exclusive/],
    [{ REDIS_ADAPTER: "streams" }, /REDIS_ADAPTER/],
    [{ TOKEN_GRACE_SECONDS: "120" }, /TOKEN_GRACE_SECONDS/],
    [{ CLERK_JWT_KEY: "not a pem" }, /CLERK_JWT_KEY/],
    [{ LOG_LEVEL: "loud" }, /LOG_LEVEL/],
    [{ CORS_ORIGINS: "*" }, /CORS_ORIGINS: "\*" is not an origin/],
    [{ CORS_ORIGINS: "https://a.example/app" }, /CORS_ORIGINS/],
    [{ CORS_ORIGINS: "ftp://a.example" }, /CORS_ORIGINS/],
    [{ CLERK_AUTHORIZED_PARTIES: "app.example.com" }, /CLERK_AUTHORIZED_PARTIES/],
    [{ TRUST_PROXY: "yes" }, /TRUST_PROXY/],
    [{ TRUST_PROXY: "-1" }, /TRUST_PROXY/],
    [{ RATE_LIMIT_CONNECTIONS_PER_IP_PER_MINUTE: "0" }, /RATE_LIMIT_CONNECTIONS_PER_IP_PER_MINUTE/],
    [{ RATE_LIMIT_COMMANDS_PER_SECOND: "0" }, /RATE_LIMIT_COMMANDS_PER_SECOND/],
    [{ RATE_LIMIT_COMMAND_BURST: "1.5" }, /RATE_LIMIT_COMMAND_BURST/],
  ])("a bad value stops with a message naming it: %o", (env, name) => {
    expect(() => loadConfig(env)).toThrow(ConfigError);
    expect(() => loadConfig(env)).toThrow(name);
  });

  test("npm start in production without Clerk configuration exits with a clear message", () => {
    const r = spawnSync(process.execPath, ["--import", "tsx", "server/src/main.ts"], {
      env: {
        ...process.env,
        NODE_ENV: "production",
        DATABASE_URL: "postgres://x@127.0.0.1:1/db",
        CLERK_JWT_KEY: "",
        CLERK_SECRET_KEY: "",
      },
      encoding: "utf8",
      timeout: 20_000,
    });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/Configuration error: .*CLERK_JWT_KEY/);
  });
});

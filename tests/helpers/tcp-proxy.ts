/**
 * A TCP proxy on a free loopback port in front of one target (a private redis-server, Postgres), for tests
 * that cut or hold one node's link while the other nodes keep theirs:
 * - `cut()`: every connection through the proxy is destroyed, and new ones are refused until
 *   `restore()` (the node sees its Redis go away; the others see nothing);
 * - `hold()`: bytes from the clients are kept back (the target sees nothing new; replies to what
 *   it already had still flow) until `release()` writes them on, in order;
 * - `holdReplies()`: the target's answers are kept back (it did the work; the client does not
 *   hear of it), until `release()`, or `cut()` drops them (an answer lost with its connection).
 */
import { createServer, type Server, type Socket, connect as tcpConnect } from "node:net";
import { freePort } from "./redis-process.js";

interface Pair {
  client: Socket;
  upstream: Socket;
  held: Buffer[];
  heldReplies: Buffer[];
}

export class TcpProxy {
  private server: Server | undefined;
  private readonly pairs = new Set<Pair>();
  private refusing = false;
  private holding = false;
  private holdingReplies = false;
  port = 0;

  constructor(
    private readonly targetPort: number,
    private readonly targetHost = "127.0.0.1",
  ) {}

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  async start(): Promise<void> {
    this.port = await freePort();
    this.server = createServer((client) => this.accept(client));
    await new Promise<void>((resolve, reject) => {
      this.server?.once("error", reject);
      this.server?.listen(this.port, "127.0.0.1", () => resolve());
    });
  }

  private accept(client: Socket): void {
    if (this.refusing) {
      client.destroy();
      return;
    }
    const upstream = tcpConnect(this.targetPort, this.targetHost);
    const pair: Pair = { client, upstream, held: [], heldReplies: [] };
    this.pairs.add(pair);
    const drop = () => {
      this.pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("data", (d: Buffer) => {
      if (this.holding) pair.held.push(d);
      else upstream.write(d);
    });
    upstream.on("data", (d: Buffer) => {
      if (this.holdingReplies) pair.heldReplies.push(d);
      else client.write(d);
    });
    client.on("error", drop);
    upstream.on("error", drop);
    client.on("close", drop);
    upstream.on("close", drop);
  }

  /** Drops every connection and refuses new ones until restore(). */
  cut(): void {
    this.refusing = true;
    this.holdingReplies = false;
    for (const p of [...this.pairs]) {
      p.client.destroy();
      p.upstream.destroy();
    }
    this.pairs.clear();
  }

  restore(): void {
    this.refusing = false;
  }

  /** Keeps back what clients send from now on. */
  hold(): void {
    this.holding = true;
  }

  /** Keeps back what the target answers from now on (until cut() drops it, or release()). */
  holdReplies(): void {
    this.holdingReplies = true;
  }

  /** Sends on what was kept back, in order, and stops holding. */
  release(): void {
    this.holding = false;
    this.holdingReplies = false;
    for (const p of this.pairs) {
      for (const d of p.held.splice(0)) p.upstream.write(d);
      for (const d of p.heldReplies.splice(0)) p.client.write(d);
    }
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) =>
      this.server ? this.server.close(() => resolve()) : resolve(),
    );
  }
}

/**
 * The load generator's cheap Socket.IO connection: a TCP socket that speaks the WebSocket
 * upgrade (RFC 6455), Engine.IO v4 and Socket.IO v5 itself, with no client library. A
 * socket.io-client instance costs the generator about as much CPU per handshake as the server
 * spends on it (an Engine.IO socket, a Manager, timers, the `ws` client's HTTP request), so on
 * a small machine the generator, not the server, bounded the handshakes per second; this costs
 * it a fraction of that. It does only what the connection phases need, as docs/protocol.md
 * ("Connecting and authentication") has a client do it:
 *
 * 1. `GET /socket.io/?EIO=4&transport=websocket` with the upgrade headers;
 * 2. the server's Engine.IO open packet (`0{"sid":...}`);
 * 3. the CONNECT packet to the main namespace with the auth payload (`40{"token":"..."}`);
 * 4. `40{"sid":...}` (connected) or CONNECT_ERROR (`44{"message":...,"data":{"code":...}}`);
 * 5. while held, every ping (`2`) is answered (`3`); `close()` sends Socket.IO's DISCONNECT
 *    (`41`) and a WebSocket close frame, as socket.disconnect() does, and ends the socket.
 *
 * Frames it sends are masked (a client must mask; the key is fixed, which the protocol allows
 * a non-browser client); frames it receives may be split across reads or share one, and may
 * have 7-, 16- or 64-bit lengths. It never sends or expects binary frames or fragments beyond
 * what these packets need (a fragmented or binary frame fails the connection: the servers
 * under test send neither during a handshake).
 */
import { connect, type Socket } from "node:net";

/** An open connection: the namespace is connected. */
export interface RawConnection {
  /** DISCONNECT, a close frame, then the TCP socket is ended. */
  close(): void;
}

/** Why a connection failed: `code` is the server's `data.code` when it refused the CONNECT. */
export class RawConnectError extends Error {
  constructor(readonly code: string) {
    super(code);
  }
}

const OPCODE_TEXT = 0x1;
const OPCODE_CLOSE = 0x8;
const OPCODE_PING = 0x9;
const OPCODE_PONG = 0xa;
/** A fixed mask key: masking is required of clients, its randomness protects only browsers. */
const MASK = Buffer.from([0x12, 0x34, 0x56, 0x78]);
/** No server frame during a handshake comes near this; a larger one means a broken peer. */
const MAX_FRAME_BYTES = 1 << 20;

/** One masked client frame of `opcode` carrying `payload`. */
function frame(opcode: number, payload: Buffer): Buffer {
  const n = payload.length;
  const lengthBytes = n < 126 ? 0 : n < 65_536 ? 2 : 8;
  const out = Buffer.allocUnsafe(2 + lengthBytes + 4 + n);
  out[0] = 0x80 | opcode; // FIN
  if (lengthBytes === 0) out[1] = 0x80 | n;
  else if (lengthBytes === 2) {
    out[1] = 0x80 | 126;
    out.writeUInt16BE(n, 2);
  } else {
    out[1] = 0x80 | 127;
    out.writeBigUInt64BE(BigInt(n), 2);
  }
  const at = 2 + lengthBytes;
  MASK.copy(out, at);
  for (let i = 0; i < n; i++) out[at + 4 + i] = (payload[i] as number) ^ (MASK[i & 3] as number);
  return out;
}

/**
 * Connects to `url` (http://host:port) and authenticates with `auth` in the CONNECT packet.
 * Resolves when the server answered `40`; rejects with RawConnectError otherwise (the server's
 * refusal code, or what went wrong), within `timeoutMs`.
 */
export function openRaw(
  url: string,
  auth: Record<string, unknown>,
  timeoutMs = 20_000,
): Promise<RawConnection> {
  const { hostname, port } = new URL(url);
  const host = hostname.replace(/^\[|\]$/g, "");
  return new Promise((resolve, reject) => {
    const socket: Socket = connect(Number(port || 80), host);
    socket.setNoDelay(true);
    let state: "upgrading" | "opening" | "connecting" | "connected" | "closed" = "upgrading";
    let pending: Buffer = Buffer.alloc(0);
    const send = (opcode: number, text: string) => {
      if (!socket.destroyed) socket.write(frame(opcode, Buffer.from(text, "utf8")));
    };
    const connection: RawConnection = {
      close() {
        if (state === "closed") return;
        state = "closed";
        send(OPCODE_TEXT, "41");
        send(OPCODE_CLOSE, "");
        socket.end();
        // The server answers the close frame and ends its side; do not wait for it forever.
        setTimeout(() => socket.destroy(), 2000).unref();
      },
    };
    const fail = (code: string) => {
      if (state === "connected" || state === "closed") return;
      state = "closed";
      clearTimeout(timer);
      socket.destroy();
      reject(new RawConnectError(code));
    };
    const timer = setTimeout(() => fail("timeout"), timeoutMs);
    const onPacket = (text: string) => {
      // Engine.IO ping: answered in every state, or the server closes the connection.
      if (text === "2") return send(OPCODE_TEXT, "3");
      if (state === "opening") {
        if (!text.startsWith("0{")) return fail("bad open packet");
        state = "connecting";
        send(OPCODE_TEXT, `40${JSON.stringify(auth)}`);
      } else if (state === "connecting") {
        if (text.startsWith("40")) {
          state = "connected";
          clearTimeout(timer);
          resolve(connection);
        } else if (text.startsWith("44")) {
          let code = "refused";
          try {
            const body = JSON.parse(text.slice(2)) as {
              message?: string;
              data?: { code?: string };
            };
            code = body.data?.code ?? body.message ?? code;
          } catch {
            // an unparseable refusal is still a refusal
          }
          fail(code);
        }
      }
      // Anything else once connected (events the server emits) is not needed here.
    };
    /** Consumes every whole frame in `pending`. */
    const onFrames = () => {
      while (pending.length >= 2) {
        const b0 = pending[0] as number;
        const b1 = pending[1] as number;
        let length = b1 & 0x7f;
        let offset = 2;
        if (length === 126) {
          if (pending.length < 4) return;
          length = pending.readUInt16BE(2);
          offset = 4;
        } else if (length === 127) {
          if (pending.length < 10) return;
          length = Number(pending.readBigUInt64BE(2));
          offset = 10;
        }
        if (b1 & 0x80) return fail("masked server frame");
        if (length > MAX_FRAME_BYTES) return fail("frame too large");
        if (pending.length < offset + length) return;
        const payload = pending.subarray(offset, offset + length);
        pending = pending.subarray(offset + length);
        const opcode = b0 & 0x0f;
        if (!(b0 & 0x80)) return fail("fragmented frame");
        if (opcode === OPCODE_TEXT) onPacket(payload.toString("utf8"));
        else if (opcode === OPCODE_PING) {
          if (!socket.destroyed) socket.write(frame(OPCODE_PONG, Buffer.from(payload)));
        } else if (opcode === OPCODE_CLOSE) {
          fail("closed by the server");
          socket.destroy();
          return;
        } else if (opcode !== OPCODE_PONG) return fail(`unexpected opcode ${opcode}`);
      }
    };
    socket.once("connect", () => {
      socket.write(
        `GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n` +
          `Host: ${hostname}:${port}\r\n` +
          "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n" +
          "Sec-WebSocket-Key: bG9hZC10ZXN0LWtleS0xMg==\r\n\r\n",
      );
    });
    socket.on("data", (chunk: Buffer) => {
      pending = pending.length > 0 ? Buffer.concat([pending, chunk]) : chunk;
      if (state === "upgrading") {
        const end = pending.indexOf("\r\n\r\n");
        if (end < 0) {
          if (pending.length > 16_384) fail("upgrade response too large");
          return;
        }
        const status = pending.toString("latin1", 0, pending.indexOf("\r\n"));
        if (!/^HTTP\/1\.1 101 /.test(status)) return fail(`upgrade refused: ${status}`);
        state = "opening";
        pending = pending.subarray(end + 4);
      }
      onFrames();
    });
    socket.on("error", (e) => fail(e.message));
    socket.on("close", () => {
      fail("connection closed");
      state = "closed";
    });
  });
}

/**
 * Commands over the connection: one emit with an ack and a timeout per command, the ack turned
 * into its `data` or a typed `ChatClientError`, and the guards and the token retry every
 * command of the client goes through.
 */
import type { Ack, CommandInput, CommandName, CommandResults } from "@chat-backend/protocol";
import { ErrorCode } from "@chat-backend/protocol";
import type { Connection } from "./connection.js";
import { ChatClientError, ClientErrorCode } from "./errors.js";

/** socket.io-client's emit with a timeout, untyped: the ack is checked here. */
export type TimedEmitter = {
  timeout(ms: number): {
    emit(event: string, payload: unknown, ack: (err: Error | null, result: unknown) => void): void;
  };
};

/**
 * Emits one command and waits for its ack: resolves with the ack's `data`, rejects with the
 * ack's error, `TIMEOUT` (no ack within `timeoutMs`) or `DISCONNECTED` (the connection dropped
 * first; the command may have run).
 */
export function emitCommand<C extends CommandName>(
  socket: TimedEmitter,
  name: C,
  payload: CommandInput<C>,
  timeoutMs: number,
): Promise<CommandResults[C]> {
  return new Promise((resolve, reject) => {
    socket.timeout(timeoutMs).emit(name, payload, (err, result) => {
      if (err) {
        const timedOut = /timed out/i.test(err.message);
        reject(
          new ChatClientError(
            timedOut ? ClientErrorCode.TIMEOUT : ClientErrorCode.DISCONNECTED,
            timedOut
              ? `No answer to ${name} within ${timeoutMs} ms`
              : `The connection dropped before ${name} was answered`,
            { command: name, cause: err },
          ),
        );
        return;
      }
      const ack = result as Ack<CommandResults[C]> | undefined;
      if (ack?.ok === true) resolve(ack.data);
      else if (ack?.ok === false) reject(ChatClientError.fromProtocol(ack.error, name));
      else reject(new ChatClientError(ErrorCode.INTERNAL, "Malformed ack", { command: name }));
    });
  });
}

/** The client's commands: refused when closed or signed out; one refresh on `TOKEN_EXPIRED`. */
export class Commands {
  private readonly connection: Connection;

  constructor(connection: Connection) {
    this.connection = connection;
  }

  /** Throws `CLOSED` or `SIGNED_OUT` when no command can run now. */
  check(command?: CommandName): void {
    if (this.connection.closed) {
      throw new ChatClientError(ClientErrorCode.CLOSED, "The client was closed", { command });
    }
    if (this.connection.signedOut) {
      throw new ChatClientError(ClientErrorCode.SIGNED_OUT, "Signed out", { command });
    }
  }

  /**
   * Sends a command (buffered by socket.io-client while offline, until the timeout). A command
   * answered `TOKEN_EXPIRED` (a throttled tab missed its refresh) is sent once more after an
   * in-band refresh.
   */
  async send<C extends CommandName>(name: C, payload: CommandInput<C>): Promise<CommandResults[C]> {
    this.check(name);
    try {
      return await this.connection.request(name, payload);
    } catch (e) {
      if (e instanceof ChatClientError && e.code === ErrorCode.TOKEN_EXPIRED) {
        if (await this.connection.refreshToken()) return this.connection.request(name, payload);
      }
      throw e;
    }
  }
}

import type { MessageService } from "../../services/message.service.js";
import type { StreamService } from "../../services/stream.service.js";
import type { CommandHandlers } from "../command.js";

type MessageCommands = Pick<
  CommandHandlers,
  "message:send" | "message:history" | "message:sync" | "message:stop"
>;

/** The message commands. The socket's user (`socket.data`) is the actor. */
export function messageHandlers(messages: MessageService, streams: StreamService): MessageCommands {
  return {
    "message:send": (socket, p) => messages.send(socket.data, p),
    "message:history": (socket, p, signal) => messages.history(socket.data, p, signal),
    "message:sync": (socket, p, signal) => messages.sync(socket.data, p, signal),
    "message:stop": (socket, p) => streams.stop(socket.data, p),
  };
}

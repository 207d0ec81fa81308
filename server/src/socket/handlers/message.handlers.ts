import type { Actor } from "../../services/actor.js";
import type { MessageService } from "../../services/message.service.js";
import { type CommandContext, registerCommand } from "../command.js";
import type { ChatSocket } from "../types.js";

export function registerMessageHandlers(
  socket: ChatSocket,
  actor: Actor,
  messages: MessageService,
  ctx: CommandContext,
): void {
  registerCommand(socket, "message:send", (p) => messages.send(actor, p), ctx);
  registerCommand(socket, "message:history", (p) => messages.history(actor, p), ctx);
  registerCommand(socket, "message:sync", (p) => messages.sync(actor, p), ctx);
}

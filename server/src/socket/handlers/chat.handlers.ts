import type { Actor } from "../../services/actor.js";
import type { ChatService } from "../../services/chat.service.js";
import { type CommandContext, registerCommand } from "../command.js";
import { type ChatSocket, rooms } from "../types.js";

export function registerChatHandlers(
  socket: ChatSocket,
  actor: Actor,
  chats: ChatService,
  ctx: CommandContext,
): void {
  registerCommand(socket, "chat:list", (p) => chats.list(actor, p), ctx);
  registerCommand(
    socket,
    "chat:create",
    async (p) => ({ chat: await chats.create(actor, p) }),
    ctx,
  );
  registerCommand(
    socket,
    "chat:rename",
    async (p) => ({ chat: await chats.rename(actor, p) }),
    ctx,
  );
  registerCommand(socket, "chat:delete", (p) => chats.delete(actor, p), ctx);
  registerCommand(
    socket,
    "chat:open",
    (p) => chats.open(actor, p, () => socket.join(rooms.chat(p.chatId))),
    ctx,
  );
  registerCommand(
    socket,
    "chat:close",
    async (p) => {
      socket.leave(rooms.chat(p.chatId));
      return { chatId: p.chatId };
    },
    ctx,
  );
}

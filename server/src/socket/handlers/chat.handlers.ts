import type { ChatService } from "../../services/chat.service.js";
import type { CommandHandlers } from "../command.js";
import { rooms } from "../types.js";

type ChatCommands = Pick<
  CommandHandlers,
  "chat:list" | "chat:create" | "chat:rename" | "chat:delete" | "chat:open" | "chat:close"
>;

/** The chat commands. The socket's user (`socket.data`) is the actor. */
export function chatHandlers(chats: ChatService): ChatCommands {
  return {
    "chat:list": (socket, p) => chats.list(socket.data, p),
    "chat:create": async (socket, p) => ({ chat: await chats.create(socket.data, p) }),
    "chat:rename": async (socket, p) => ({ chat: await chats.rename(socket.data, p) }),
    "chat:delete": (socket, p) => chats.delete(socket.data, p),
    "chat:open": (socket, p) => chats.open(socket.data, p, () => socket.join(rooms.chat(p.chatId))),
    "chat:close": async (socket, p) => {
      socket.leave(rooms.chat(p.chatId));
      return { chatId: p.chatId };
    },
  };
}

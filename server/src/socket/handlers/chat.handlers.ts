import { whenSubscribed } from "../../redis/sharded-adapter.js";
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
    "chat:list": (socket, p, signal) => chats.list(socket.data, p, signal),
    "chat:create": async (socket, p) => ({ chat: await chats.create(socket.data, p) }),
    "chat:rename": async (socket, p) => ({ chat: await chats.rename(socket.data, p) }),
    "chat:delete": (socket, p) => chats.delete(socket.data, p),
    // Socket.IO would add a socket that disconnected meanwhile to the room for good.
    "chat:open": (socket, p, signal) =>
      chats.open(
        socket.data,
        p,
        async () => {
          if (!socket.connected) return;
          socket.join(rooms.chat(p.chatId));
          // The sharded adapter subscribes per room: wait until this node receives it.
          await whenSubscribed(socket.nsp.adapter, rooms.chat(p.chatId));
        },
        signal,
      ),
    "chat:close": async (socket, p) => {
      socket.leave(rooms.chat(p.chatId));
      return { chatId: p.chatId };
    },
  };
}

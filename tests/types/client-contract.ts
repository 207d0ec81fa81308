/**
 * Type tests of the contract as a client uses it (never run: `tsc` checks them). A payload,
 * result or event that drifts from protocol/index.ts fails here, as does a check that stops
 * failing (`@ts-expect-error` then reports an unused directive).
 */
import type {
  Ack,
  ChatMessage,
  ChatSnapshot,
  ChatSummary,
  ClientToServerEvents,
  CommandInput,
  CommandResults,
  ServerToClientEvents,
  UserStats,
} from "@chat-backend/client";
import { type ChatClient, createChatClient, ErrorCode } from "@chat-backend/client";
import { useChat, useConnection, useConnectionStatus, useSendMessage } from "@chat-backend/react";
import { io, type Socket } from "socket.io-client";
import { expectTypeOf } from "vitest";

// Payloads are plain types, never `any`.
expectTypeOf<CommandInput<"chat:create">>().not.toBeAny();
expectTypeOf<CommandInput<"chat:create">>().toEqualTypeOf<{
  id?: string | undefined;
  title?: string | undefined;
}>();
expectTypeOf<CommandInput<"message:send">>().toEqualTypeOf<{
  chatId: string;
  clientId: string;
  content: string;
}>();
expectTypeOf<CommandResults["chat:open"]["messages"]>().toEqualTypeOf<ChatMessage[]>();
expectTypeOf<CommandResults["user:stats"]>().toEqualTypeOf<{ stats: UserStats }>();
expectTypeOf<ErrorCode>().toExtend<string>();
expectTypeOf(ErrorCode.CONFLICT).toEqualTypeOf<"CONFLICT">();

export async function clientContract(client: ChatClient): Promise<void> {
  // @ts-expect-error a title is a string
  await client.createChat({ title: 42 });
  // @ts-expect-error `bogus` is no field of chat:create
  await client.createChat({ title: "ok", bogus: true });
  // @ts-expect-error chat:open needs a chatId
  await client.openChat({});
  // @ts-expect-error no such event
  client.on("chat:exploded", () => {});
  client.on("message:created", (event) => {
    expectTypeOf(event.message).toEqualTypeOf<ChatMessage>();
  });
  const { chat } = await client.createChat({ title: "typed" });
  expectTypeOf(chat).toEqualTypeOf<ChatSummary>();
  expectTypeOf(client.chat(chat.id).getSnapshot()).toEqualTypeOf<ChatSnapshot>();
  void createChatClient;
}

// The raw socket, typed by the event maps.
export function socketContract(): void {
  const socket: Socket<ServerToClientEvents, ClientToServerEvents> = io("http://localhost", {
    autoConnect: false,
  });
  socket.emit("chat:list", { limit: 10 }, (result) => {
    expectTypeOf(result).toEqualTypeOf<Ack<CommandResults["chat:list"]>>();
    if (result.ok) expectTypeOf(result.data.chats).toEqualTypeOf<ChatSummary[]>();
    else expectTypeOf(result.error.code).toEqualTypeOf<ErrorCode>();
  });
  // @ts-expect-error an unknown event
  socket.emit("chat:explode", {}, () => {});
  // @ts-expect-error a wrong payload (limit is a number)
  socket.emit("chat:list", { limit: "10" }, () => {});
  // @ts-expect-error a wrong ack: chat:list's ack carries chats, not an opened chat
  socket.emit("chat:list", {}, (result: Ack<CommandResults["chat:open"]>) => void result);
  socket.on("chat:deleted", (event) => {
    expectTypeOf(event).toEqualTypeOf<{ chatId: string }>();
  });
  // @ts-expect-error no such server event
  socket.on("chat:exploded", () => {});
}

// The React hooks.
export function HookContract(): null {
  expectTypeOf(useConnection()).toEqualTypeOf<
    ReturnType<ChatClient["connection"]["getSnapshot"]>
  >();
  expectTypeOf(useChat("id")).toEqualTypeOf<ChatSnapshot | null>();
  expectTypeOf(useConnectionStatus().code).toEqualTypeOf<string>();
  const send = useSendMessage();
  // @ts-expect-error content is a string
  void send({ chatId: "id", content: 1 });
  return null;
}

/**
 * @chat-backend/react: React bindings for @chat-backend/client. See docs/sdk.md.
 *
 * `<ChatProvider>` owns one client per signed-in user; the hooks read the client's stores with
 * `useSyncExternalStore` (server rendering gets fixed "not connected yet" snapshots), so a
 * component renders only when the store it reads changes.
 */

export {
  type OutboxView,
  useChat,
  useConnection,
  useConnectionStatus,
  useOutbox,
  useSendMessage,
  useSidebar,
  useStats,
  useStopReply,
} from "./hooks.js";
export {
  ChatProvider,
  type ChatProviderProps,
  useChatClient,
} from "./provider.js";

/**
 * @chat-backend/client: the browser and React Native SDK of the chat backend.
 * See docs/sdk.md.
 */

export type {
  Ack,
  ChatGenerating,
  ChatMessage,
  ChatSummary,
  ClientToServerEvents,
  CommandInput,
  CommandInputs,
  CommandName,
  CommandResults,
  ConnectionClosing,
  GeneratingState,
  MessageBody,
  MessageDelta,
  MessagePage,
  MessageStopped,
  MessageStreamFailed,
  MessageStreaming,
  ProtocolError,
  ServerToClientEvents,
  StreamSnapshot,
  UserStats,
} from "@chat-backend/protocol";
export {
  ConnectErrorCode,
  commandNames,
  DisconnectReason,
  ErrorCode,
  Limits,
  PROTOCOL_VERSION,
  retryableErrorCodes,
  StreamFailureReason,
} from "@chat-backend/protocol";
export {
  type ChatClient,
  type ChatClientEvents,
  type ChatClientOptions,
  ConnectionCode,
  type ConnectionState,
  type ConnectionStatus,
  createChatClient,
  type OutboxStore,
} from "./client.js";
export {
  ChatClientError,
  type ChatErrorCode,
  ClientErrorCode,
  isRetryable,
} from "./errors.js";
export {
  indexedDbOutboxStorage,
  type KeyValueStorage,
  keyValueOutboxStorage,
  memoryOutboxStorage,
  type OutboxEntry,
  type OutboxRecord,
  type OutboxStatus,
  type OutboxStorage,
} from "./outbox.js";
export type {
  ChatItem,
  ChatSnapshot,
  ChatStatus,
  ChatStore,
  ReadableStore,
  SidebarSnapshot,
  SidebarStore,
  StreamingReply,
} from "./stores.js";

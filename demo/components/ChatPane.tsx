import {
  useChat,
  useChatClient,
  useConnection,
  useSendMessage,
  useSidebar,
  useStopReply,
} from "@chat-backend/react";
import { type FormEvent, useEffect, useRef, useState } from "react";
import { DEFAULT_TITLE, DESKTOP_QUERY, report } from "../lib.js";
import { Composer } from "./Composer.js";
import { MessageList } from "./MessageList.js";

/**
 * One chat, open and live while shown (`useChat`): its title (rename), delete, the messages
 * with this device's unsent ones and the reply as it streams, and the composer with Stop.
 */
export function ChatPane({
  chatId,
  focus,
  onGone,
}: {
  chatId: string;
  /** Focus the composer also on a phone (a chat just created here). */
  focus: boolean;
  /** Deleted here or on another device, or a stale link: back to the start screen. */
  onGone: () => void;
}) {
  const client = useChatClient();
  const chat = useChat(chatId);
  const entry = useSidebar().chats.find((c) => c.id === chatId);
  const online = useConnection() === "online";
  const sendMessage = useSendMessage();
  const stopReply = useStopReply();
  const composer = useRef<HTMLTextAreaElement>(null);

  const deleted = chat?.status === "deleted";
  useEffect(() => {
    if (deleted) onGone();
  }, [deleted, onGone]);

  useEffect(() => {
    if (focus || matchMedia(DESKTOP_QUERY).matches) composer.current?.focus();
  }, [focus]);

  const items = chat?.items ?? [];
  const live = items.findLast((i) => i.status === "streaming");

  const send = (content: string) => {
    // A chat still named by default takes its first message as its title, like assistant
    // apps do. The rename and the send go at once: whichever commits last, every device ends
    // with the row as committed (sidebar entries carry a version, docs/protocol.md).
    if (client && entry && entry.title === DEFAULT_TITLE && !entry.lastMessage) {
      const title = content.trim().replace(/\s+/g, " ").slice(0, 60);
      client.renameChat({ chatId, title }).catch((err) => report("rename", err));
    }
    // Shown as pending at once; the outbox delivers it (also after being offline).
    sendMessage({ chatId, content }).catch((err) => report("send", err));
  };

  const stop = live
    ? () => stopReply({ chatId, streamId: live.key }).catch((err) => report("stop", err))
    : undefined;

  const remove = () => {
    onGone();
    client?.deleteChat({ chatId }).catch((err) => report("delete", err));
  };

  return (
    <section id="chat" className="chat">
      <div className="chat-head">
        <TitleField
          title={entry?.title ?? ""}
          onRename={(title) =>
            client?.renameChat({ chatId, title }).catch((err) => report("rename", err))
          }
        />
        <button id="delete" className="text-button danger" type="button" onClick={remove}>
          Delete
        </button>
      </div>
      {items.length === 0 && chat?.status === "ready" ? (
        <p id="chat-empty" className="chat-empty">
          Ask anything. The reply streams in here, and on your other devices at the same time.
        </p>
      ) : null}
      <MessageList chatId={chatId} items={items} online={online} />
      <Composer ref={composer} onSend={send} onStop={stop} />
    </section>
  );
}

/** The chat's title, editable: renamed on Enter or when it loses focus; Escape
 * cancels. */
function TitleField({ title, onRename }: { title: string; onRename: (title: string) => void }) {
  // null while not editing: the input then follows the title as other devices rename it.
  const [draft, setDraft] = useState<string | null>(null);
  const input = useRef<HTMLInputElement>(null);
  const cancelled = useRef(false);
  const commit = () => {
    const next = cancelled.current ? undefined : draft?.trim();
    cancelled.current = false;
    setDraft(null);
    if (next && next !== title) onRename(next);
  };
  const submit = (e: FormEvent) => {
    e.preventDefault();
    input.current?.blur();
  };
  return (
    <form id="rename" className="rename" onSubmit={submit}>
      <input
        id="title"
        ref={input}
        aria-label="Chat title"
        maxLength={200}
        autoComplete="off"
        value={draft ?? title}
        onFocus={() => setDraft(title)}
        onChange={(e) => setDraft(e.target.value)}
        onBlur={commit}
        onKeyDown={(e) => {
          if (e.key === "Escape") {
            cancelled.current = true;
            e.currentTarget.blur();
          }
        }}
      />
    </form>
  );
}

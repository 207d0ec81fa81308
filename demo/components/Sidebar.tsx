import type { ChatSummary } from "@chat-backend/client";
import { useChatClient, useSidebar } from "@chat-backend/react";
import { memo, useEffect, useState } from "react";
import { ago, report } from "../lib.js";

function previewOf(chat: ChatSummary): string {
  if (chat.generating) return "Writing a reply…";
  const last = chat.lastMessage;
  if (!last) return "No messages yet";
  return last.role === "user" ? `You: ${last.content}` : last.content;
}

/**
 * The user's chats, newest first, live on every device: a spinner on a chat whose reply is
 * being generated (wherever it was asked), the last message as preview.
 */
export function Sidebar({
  current,
  onOpen,
}: {
  current: string | null;
  onOpen: (chatId: string) => void;
}) {
  const client = useChatClient();
  const sidebar = useSidebar();
  // Relative times ("5m") move on by themselves.
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    const timer = setInterval(() => setNow(Date.now()), 30_000);
    return () => clearInterval(timer);
  }, []);

  return (
    <>
      <ul id="sidebar" className="sidebar" aria-label="Chats">
        {sidebar.chats.map((chat) => (
          <SidebarEntry
            key={chat.id}
            chat={chat}
            active={chat.id === current}
            now={now}
            onOpen={onOpen}
          />
        ))}
      </ul>
      {sidebar.status === "ready" && sidebar.chats.length === 0 ? (
        <p id="sidebar-empty" className="sidebar-empty">
          No chats yet.
        </p>
      ) : null}
      {sidebar.hasMore ? (
        <button
          className="more"
          type="button"
          onClick={() => client?.sidebar.loadMore().catch((err) => report("load more", err))}
        >
          Older chats
        </button>
      ) : null}
    </>
  );
}

const SidebarEntry = memo(function SidebarEntry({
  chat,
  active,
  now,
  onOpen,
}: {
  chat: ChatSummary;
  active: boolean;
  now: number;
  onOpen: (chatId: string) => void;
}) {
  const generating = Boolean(chat.generating);
  return (
    <li
      data-chat-id={chat.id}
      data-generating={String(generating)}
      className={active ? "active" : undefined}
    >
      <button
        type="button"
        aria-current={active ? "page" : undefined}
        onClick={() => onOpen(chat.id)}
      >
        <span className="title">{chat.title}</span>
        <span className="when">{ago(chat.updatedAt, now)}</span>
        <span className="preview">
          {generating ? <span className="spinner" role="img" aria-label="generating" /> : null}
          {previewOf(chat)}
        </span>
      </button>
    </li>
  );
});

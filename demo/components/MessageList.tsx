import type { ChatItem } from "@chat-backend/client";
import { useOutbox } from "@chat-backend/react";
import { memo, useLayoutEffect, useRef } from "react";
import { messageTime, report } from "../lib.js";

/**
 * The chat's items (`useChat(...).items`): stored messages, this device's unsent ones, and
 * replies as they stream. Kept at the bottom as it grows, unless scrolled up.
 */
export function MessageList({
  chatId,
  items,
  online,
}: {
  chatId: string;
  items: readonly ChatItem[];
  online: boolean;
}) {
  const list = useRef<HTMLOListElement>(null);
  const atBottom = useRef(true);
  const outbox = useOutbox();

  // biome-ignore lint/correctness/useExhaustiveDependencies: scrolled again when items change
  useLayoutEffect(() => {
    const el = list.current;
    if (el && atBottom.current) el.scrollTop = el.scrollHeight;
  }, [items, chatId]);

  return (
    <ol
      id="messages"
      className="messages"
      aria-live="polite"
      ref={list}
      onScroll={(e) => {
        const el = e.currentTarget;
        atBottom.current = el.scrollHeight - el.scrollTop - el.clientHeight < 48;
      }}
    >
      {items.map((item) => (
        <Message
          key={item.key}
          item={item}
          online={online}
          retry={outbox.retry}
          discard={outbox.discard}
        />
      ))}
    </ol>
  );
}

/** One item of the chat, with what its status line needs. */
interface ItemProps {
  item: ChatItem;
  online: boolean;
  retry: (clientId: string) => void;
  discard: (clientId: string) => Promise<void>;
}

const Message = memo(function Message({ item, online, retry, discard }: ItemProps) {
  return (
    <li
      data-client-id={item.clientId}
      data-role={item.role}
      data-status={item.status}
      data-stopped={String(item.stopped)}
      data-seq={item.seq ?? undefined}
    >
      {item.role === "assistant" ? <span className="who">Assistant</span> : null}
      <div className="bubble content">{item.content}</div>
      <div className="meta">
        <Status item={item} online={online} retry={retry} discard={discard} />
      </div>
    </li>
  );
});

function Status({ item, online, retry, discard }: ItemProps) {
  const time = messageTime(item.createdAt);
  switch (item.status) {
    case "pending":
    case "sending":
      return online ? "Sending…" : "Waiting for the connection…";
    case "failed":
      if (item.role !== "user") {
        return `Reply failed${item.error ? `: ${item.error.message}` : ""}`;
      }
      return (
        <>
          <span className="failure" title={item.error?.message}>
            Not sent{item.error ? ` (${item.error.code})` : ""}
          </span>
          <button type="button" data-action="retry" onClick={() => retry(item.clientId)}>
            Retry
          </button>
          <button
            type="button"
            data-action="discard"
            onClick={() => discard(item.clientId).catch((err) => report("discard", err))}
          >
            Discard
          </button>
        </>
      );
    case "streaming":
      return "Writing…";
    case "stopped":
      return `${time} · Stopped`;
    default:
      return item.stopped ? `${time} · Stopped` : time;
  }
}

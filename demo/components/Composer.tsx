import { type FormEvent, type RefObject, useLayoutEffect, useState } from "react";

/**
 * The message field (Enter sends, Shift+Enter starts a new line) with Send, and Stop while a
 * reply streams in the chat.
 */
export function Composer({
  ref,
  onSend,
  onStop,
}: {
  /** The field, for the chat to focus. */
  ref: RefObject<HTMLTextAreaElement | null>;
  onSend: (content: string) => void;
  /** Present while a reply is streaming. */
  onStop: (() => void) | undefined;
}) {
  const [content, setContent] = useState("");

  // Grows with its text, up to 160 px.
  // biome-ignore lint/correctness/useExhaustiveDependencies: measured again when the text changes
  useLayoutEffect(() => {
    const el = ref.current;
    if (!el) return;
    el.style.height = "auto";
    el.style.height = `${Math.min(el.scrollHeight + 2, 160)}px`;
  }, [content]);

  const send = () => {
    if (!content.trim()) return;
    onSend(content);
    setContent("");
  };
  const submit = (e: FormEvent) => {
    e.preventDefault();
    send();
  };

  return (
    <form id="composer" className="composer" onSubmit={submit}>
      <textarea
        id="content"
        ref={ref}
        rows={1}
        placeholder="Message the assistant"
        aria-label="Message"
        autoComplete="off"
        value={content}
        onChange={(e) => setContent(e.target.value)}
        onKeyDown={(e) => {
          // Not while an input method is composing a character.
          if (e.key === "Enter" && !e.shiftKey && !e.nativeEvent.isComposing) {
            e.preventDefault();
            send();
          }
        }}
      />
      {onStop ? (
        <button id="stop" className="stop" type="button" onClick={onStop}>
          Stop
        </button>
      ) : null}
      <button id="send" className="send" type="submit" aria-label="Send">
        <svg viewBox="0 0 24 24" width="20" height="20" aria-hidden="true">
          <path d="M4 12l16-8-6 16-2.5-6.5L4 12z" fill="currentColor" />
        </svg>
      </button>
    </form>
  );
}

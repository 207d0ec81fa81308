/**
 * The page of tests/browser/react-hooks.test.ts: @chat-backend/react under StrictMode, with two
 * views that can show the same chat, a sidebar, the connection state and the stats. Each view
 * counts its commits (an effect without dependencies runs once per commit, also under
 * StrictMode's double render). `window.app` lets the test steer it.
 */
import type { ChatClient, CommandInput, CommandResults, OutboxEntry } from "@chat-backend/client";
import {
  ChatProvider,
  useChat,
  useChatClient,
  useConnection,
  useConnectionStatus,
  useOutbox,
  useSendMessage,
  useSidebar,
  useStats,
  useStopReply,
} from "@chat-backend/react";
import { createElement as h, StrictMode, useEffect, useState } from "react";
import { createRoot } from "react-dom/client";

type ViewName = "first" | "second";

interface AppControls {
  commits: Record<string, number>;
  client: ChatClient | null;
  outbox: readonly OutboxEntry[];
  show(view: ViewName, chatId: string | null): void;
  send(input: { chatId: string; content: string }): Promise<CommandResults["message:send"]>;
  stop(input: CommandInput<"message:stop">): Promise<CommandResults["message:stop"]>;
  retry(clientId: string): void;
  discard(clientId: string): Promise<void>;
}

declare global {
  interface Window {
    app: AppControls;
  }
}

const app: AppControls = {
  commits: {},
  client: null,
  outbox: [],
  show: () => {},
  send: () => Promise.reject(new Error("not mounted")),
  stop: () => Promise.reject(new Error("not mounted")),
  retry: () => {},
  discard: () => Promise.resolve(),
};
window.app = app;

function useCommitCount(name: string) {
  useEffect(() => {
    app.commits[name] = (app.commits[name] ?? 0) + 1;
  });
}

function ChatView({ name, chatId }: { name: ViewName; chatId: string }) {
  const chat = useChat(chatId);
  useCommitCount(name);
  return h(
    "section",
    { "data-view": name, "data-status": chat?.status, "data-open": String(chat?.open) },
    chat?.items.map((item) =>
      h("p", { key: item.key, "data-role": item.role, "data-status": item.status }, item.content),
    ),
  );
}

function Sidebar() {
  const sidebar = useSidebar();
  useCommitCount("sidebar");
  return h(
    "ul",
    { "data-view": "sidebar", "data-status": sidebar.status },
    sidebar.chats.map((c) =>
      h("li", { key: c.id, "data-generating": c.generating ? "yes" : "no" }, c.title),
    ),
  );
}

function Status() {
  const state = useConnection();
  const status = useConnectionStatus();
  const stats = useStats();
  return h(
    "p",
    {
      id: "status",
      "data-state": state,
      "data-code": status.code,
      "data-messages": stats ? stats.messageCount : "",
    },
    `${state}: ${status.message}`,
  );
}

function Controls() {
  const client = useChatClient();
  const send = useSendMessage();
  const stop = useStopReply();
  const outbox = useOutbox();
  useEffect(() => {
    app.client = client;
    app.send = send;
    app.stop = stop;
    app.outbox = outbox.entries;
    app.retry = outbox.retry;
    app.discard = outbox.discard;
  });
  return null;
}

function Root() {
  const [views, setViews] = useState<Record<ViewName, string | null>>({
    first: null,
    second: null,
  });
  useEffect(() => {
    app.show = (view, chatId) => setViews((v) => ({ ...v, [view]: chatId }));
  }, []);
  const params = new URLSearchParams(location.search);
  const userId = params.get("user");
  const getToken = async () => {
    const res = await fetch("/dev/token", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ userId }),
    });
    return res.ok ? ((await res.json()) as { token: string }).token : null;
  };
  return h(
    ChatProvider,
    { url: location.origin, userId, getToken },
    h(Status),
    h(Controls),
    h(Sidebar),
    views.first ? h(ChatView, { name: "first", chatId: views.first }) : null,
    views.second ? h(ChatView, { name: "second", chatId: views.second }) : null,
  );
}

const root = document.getElementById("root");
if (!root) throw new Error("no #root");
createRoot(root).render(h(StrictMode, null, h(Root)));

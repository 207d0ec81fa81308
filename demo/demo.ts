/**
 * The demo page: the SDK with plain DOM. Tokens come from the development server's
 * `POST /dev/token`; in an app, pass Clerk's `getToken` instead.
 */
import {
  type ChatClient,
  type ChatItem,
  type ChatSummary,
  createChatClient,
  indexedDbOutboxStorage,
} from "../client-sdk/src/index.js";

const $ = <T extends HTMLElement>(selector: string): T => {
  const el = document.querySelector<T>(selector);
  if (!el) throw new Error(`missing ${selector}`);
  return el;
};

const ui = {
  signin: $<HTMLFormElement>("#signin"),
  userId: $<HTMLInputElement>("#user-id"),
  state: $<HTMLSpanElement>("#state"),
  newChat: $<HTMLFormElement>("#new-chat"),
  newTitle: $<HTMLInputElement>("#new-title"),
  sidebar: $<HTMLUListElement>("#sidebar"),
  chat: $<HTMLElement>("#chat"),
  empty: $<HTMLElement>("#empty"),
  rename: $<HTMLFormElement>("#rename"),
  title: $<HTMLInputElement>("#title"),
  del: $<HTMLButtonElement>("#delete"),
  messages: $<HTMLOListElement>("#messages"),
  composer: $<HTMLFormElement>("#composer"),
  content: $<HTMLInputElement>("#content"),
};

const stateLabels = {
  connecting: "connecting…",
  online: "online",
  offline: "offline",
  reauthenticating: "reauthenticating…",
  signedOut: "signed out",
} as const;

let client: ChatClient | undefined;
let currentChat: string | undefined;
let cleanup: (() => void)[] = [];
let chatCleanup: (() => void) | undefined;

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: Record<string, string> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  node.append(...children);
  return node;
}

async function fetchToken(userId: string): Promise<string | null> {
  const res = await fetch("/dev/token", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ userId }),
  });
  // No dev tokens here (or a refused id): behave as signed out.
  if (res.status === 400 || res.status === 404) return null;
  if (!res.ok) throw new Error(`POST /dev/token: HTTP ${res.status}`);
  return ((await res.json()) as { token: string }).token;
}

function report(context: string, err: unknown): void {
  console.warn(`[demo] ${context}:`, err);
}

async function signIn(userId: string): Promise<void> {
  await signOut();
  const c = createChatClient({
    url: location.origin,
    getToken: () => fetchToken(userId),
    outboxStorage: indexedDbOutboxStorage(`chat-demo-outbox-${userId}`),
  });
  client = c;
  cleanup = [
    c.connection.subscribe(renderState),
    c.sidebar.subscribe(renderSidebar),
    c.on("chat:deleted", ({ chatId }) => {
      if (chatId === currentChat) showChat(undefined);
    }),
    c.on("error", ({ error, context }) => report(context, error)),
  ];
  renderState();
  renderSidebar();
  (window as { chatDemo?: unknown }).chatDemo = { client: c, userId };
}

async function signOut(): Promise<void> {
  showChat(undefined);
  for (const off of cleanup) off();
  cleanup = [];
  const old = client;
  client = undefined;
  await old?.close();
  renderState();
  renderSidebar();
}

function renderState(): void {
  const state = client?.state ?? "signedOut";
  ui.state.dataset.state = state;
  ui.state.textContent = stateLabels[state];
}

function renderSidebar(): void {
  const chats: readonly ChatSummary[] = client?.sidebar.getSnapshot().chats ?? [];
  ui.sidebar.replaceChildren(
    ...chats.map((chat) => {
      const li = el(
        "li",
        { "data-chat-id": chat.id, class: chat.id === currentChat ? "active" : "" },
        el("strong", { class: "title" }, chat.title),
        el("span", { class: "preview" }, chat.lastMessage?.content ?? "No messages yet"),
      );
      li.addEventListener("click", () => showChat(chat.id));
      return li;
    }),
  );
  const current = chats.find((c) => c.id === currentChat);
  if (current && document.activeElement !== ui.title) ui.title.value = current.title;
}

function renderMessages(items: readonly ChatItem[]): void {
  ui.messages.replaceChildren(
    ...items.map((item) =>
      el(
        "li",
        {
          "data-client-id": item.clientId,
          "data-status": item.status,
          ...(item.seq === null ? {} : { "data-seq": String(item.seq) }),
        },
        el("span", { class: "content" }, item.content),
        el(
          "span",
          { class: "meta" },
          item.status === "sent"
            ? `#${item.seq}`
            : item.status === "failed"
              ? `failed: ${item.error?.code ?? ""}`
              : item.status,
        ),
      ),
    ),
  );
  ui.messages.scrollTop = ui.messages.scrollHeight;
}

function showChat(chatId: string | undefined): void {
  chatCleanup?.();
  chatCleanup = undefined;
  const previous = currentChat;
  currentChat = chatId;
  if (previous && previous !== chatId) client?.closeChat({ chatId: previous }).catch(() => {});
  ui.chat.hidden = !chatId;
  ui.empty.hidden = Boolean(chatId);
  renderSidebar();
  if (!chatId || !client) return;
  const store = client.chat(chatId);
  const render = () => renderMessages(store.getSnapshot().items);
  chatCleanup = store.subscribe(render);
  render();
  ui.title.value = client.sidebar.getSnapshot().chats.find((c) => c.id === chatId)?.title ?? "";
  client.openChat({ chatId }).catch((e) => report("open", e));
}

ui.signin.addEventListener("submit", (e) => {
  e.preventDefault();
  const userId = ui.userId.value.trim();
  if (userId) void signIn(userId);
});

ui.newChat.addEventListener("submit", (e) => {
  e.preventDefault();
  const title = ui.newTitle.value.trim();
  client
    ?.createChat(title ? { title } : {})
    .then(({ chat }) => {
      ui.newTitle.value = "";
      showChat(chat.id);
    })
    .catch((err) => report("create", err));
});

ui.composer.addEventListener("submit", (e) => {
  e.preventDefault();
  const content = ui.content.value;
  if (!client || !currentChat || !content.trim()) return;
  ui.content.value = "";
  // Shown as pending at once; the outbox delivers it (also after being offline).
  client.sendMessage({ chatId: currentChat, content }).catch((err) => report("send", err));
});

ui.rename.addEventListener("submit", (e) => {
  e.preventDefault();
  const title = ui.title.value.trim();
  if (!client || !currentChat || !title) return;
  client.renameChat({ chatId: currentChat, title }).catch((err) => report("rename", err));
});

ui.del.addEventListener("click", () => {
  if (!client || !currentChat) return;
  const chatId = currentChat;
  showChat(undefined);
  client.deleteChat({ chatId }).catch((err) => report("delete", err));
});

renderState();

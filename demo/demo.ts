/**
 * The demo app: an assistant chat on the client SDK, with plain DOM. Tokens come from the
 * development server's `POST /dev/token`; in an app, pass Clerk's `getToken` instead.
 *
 * Everything on screen comes from the SDK's stores (connection, sidebar, one chat), so every
 * device of a user shows the same thing: the sidebar (with a spinner on chats whose reply is
 * being generated), the messages, a reply as it streams, stopped and failed replies, and this
 * device's unsent messages.
 */
import {
  type ChatClient,
  type ChatItem,
  type ChatSummary,
  createChatClient,
  indexedDbOutboxStorage,
} from "../client-sdk/src/index.js";

const $ = <T extends HTMLElement>(selector: string): T => {
  const node = document.querySelector<T>(selector);
  if (!node) throw new Error(`missing ${selector}`);
  return node;
};

const ui = {
  signinScreen: $<HTMLElement>("#signin-screen"),
  signin: $<HTMLFormElement>("#signin"),
  userId: $<HTMLInputElement>("#user-id"),
  app: $<HTMLElement>("#app"),
  menu: $<HTMLButtonElement>("#menu"),
  scrim: $<HTMLElement>("#scrim"),
  state: $<HTMLSpanElement>("#state"),
  whoami: $<HTMLSpanElement>("#whoami"),
  signout: $<HTMLButtonElement>("#signout"),
  newChat: $<HTMLButtonElement>("#new-chat"),
  emptyNew: $<HTMLButtonElement>("#empty-new"),
  sidebar: $<HTMLUListElement>("#sidebar"),
  sidebarEmpty: $<HTMLElement>("#sidebar-empty"),
  chat: $<HTMLElement>("#chat"),
  empty: $<HTMLElement>("#empty"),
  rename: $<HTMLFormElement>("#rename"),
  title: $<HTMLInputElement>("#title"),
  del: $<HTMLButtonElement>("#delete"),
  messages: $<HTMLOListElement>("#messages"),
  composer: $<HTMLFormElement>("#composer"),
  content: $<HTMLTextAreaElement>("#content"),
  send: $<HTMLButtonElement>("#send"),
  stop: $<HTMLButtonElement>("#stop"),
};

/** Where the signed-in user id is kept, so that a reload stays signed in (development only). */
const USER_KEY = "chat-demo:user";
const DEFAULT_TITLE = "New Chat";

const stateLabels = {
  connecting: "connecting…",
  online: "online",
  offline: "offline",
  reauthenticating: "reconnecting…",
  signedOut: "signed out",
} as const;

let client: ChatClient | undefined;
let currentChat: string | undefined;
let cleanup: (() => void)[] = [];
let chatCleanup: (() => void) | undefined;
/** The reply streaming in the open chat, if any (what the Stop button stops). */
let streaming: { chatId: string; streamId: string } | undefined;
/** The chat named in the address when the page loaded (a reload, or a link), opened at sign-in. */
let linked = /^#chat=([0-9a-f-]{36})$/.exec(location.hash)?.[1];

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

// ---------------------------------------------------------------------------------------------
// Time

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dayFormat = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });

/** A message's time: `14:05` today, `Dec 1, 14:05` before. */
function messageTime(iso: string): string {
  const d = new Date(iso);
  const today = new Date().toDateString() === d.toDateString();
  return today ? timeFormat.format(d) : `${dayFormat.format(d)}, ${timeFormat.format(d)}`;
}

/** A sidebar entry's age: `now`, `5m`, `3h`, `Dec 1`. */
function ago(iso: string): string {
  const seconds = (Date.now() - new Date(iso).getTime()) / 1000;
  if (seconds < 60) return "now";
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m`;
  if (seconds < 86_400) return `${Math.floor(seconds / 3600)}h`;
  return dayFormat.format(new Date(iso));
}

// ---------------------------------------------------------------------------------------------
// Signing in and out

async function signIn(userId: string): Promise<void> {
  await signOut({ forget: false });
  localStorage.setItem(USER_KEY, userId);
  const c = createChatClient({
    url: location.origin,
    getToken: () => fetchToken(userId),
    outboxStorage: indexedDbOutboxStorage(`chat-demo-outbox-${userId}`),
  });
  client = c;
  ui.whoami.textContent = userId;
  ui.signinScreen.hidden = true;
  ui.app.hidden = false;
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
  if (linked) showChat(linked);
  linked = undefined;
}

async function signOut({ forget }: { forget: boolean }): Promise<void> {
  showChat(undefined);
  for (const off of cleanup) off();
  cleanup = [];
  const old = client;
  client = undefined;
  await old?.close();
  if (forget) {
    localStorage.removeItem(USER_KEY);
    ui.app.hidden = true;
    ui.signinScreen.hidden = false;
  }
  renderState();
  renderSidebar();
}

function renderState(): void {
  const state = client?.state ?? "signedOut";
  ui.state.dataset.state = state;
  ui.state.textContent = stateLabels[state];
}

// ---------------------------------------------------------------------------------------------
// Sidebar

function previewOf(chat: ChatSummary): string {
  if (chat.generating) return "Writing a reply…";
  const last = chat.lastMessage;
  if (!last) return "No messages yet";
  return last.role === "user" ? `You: ${last.content}` : last.content;
}

function renderSidebar(): void {
  const chats: readonly ChatSummary[] = client?.sidebar.getSnapshot().chats ?? [];
  ui.sidebarEmpty.hidden = chats.length > 0 || !client;
  ui.sidebar.replaceChildren(
    ...chats.map((chat) => {
      const generating = Boolean(chat.generating);
      const li = el(
        "li",
        {
          "data-chat-id": chat.id,
          "data-generating": String(generating),
          class: chat.id === currentChat ? "active" : "",
        },
        el("span", { class: "title" }, chat.title),
        el("span", { class: "when" }, ago(chat.updatedAt)),
        el(
          "span",
          { class: "preview" },
          ...(generating ? [el("span", { class: "spinner", "aria-label": "generating" })] : []),
          previewOf(chat),
        ),
      );
      li.addEventListener("click", () => {
        showChat(chat.id);
        closeDrawer();
      });
      return li;
    }),
  );
  const current = chats.find((c) => c.id === currentChat);
  if (current && document.activeElement !== ui.title) ui.title.value = current.title;
}

// ---------------------------------------------------------------------------------------------
// Messages: one <li> per item, kept by key, so a streaming reply grows in place.

const rows = new Map<string, HTMLLIElement>();

function statusLine(item: ChatItem): (Node | string)[] {
  const time = messageTime(item.createdAt);
  switch (item.status) {
    case "pending":
    case "sending":
      return ["Sending…"];
    case "failed": {
      if (item.role !== "user")
        return [`Reply failed${item.error ? `: ${item.error.message}` : ""}`];
      const retry = el("button", { type: "button", "data-action": "retry" }, "Retry");
      const discard = el("button", { type: "button", "data-action": "discard" }, "Discard");
      retry.addEventListener("click", () => client?.outbox.retry(item.clientId));
      discard.addEventListener("click", () => void client?.outbox.discard(item.clientId));
      return [`Not sent${item.error ? ` (${item.error.code})` : ""}`, retry, discard];
    }
    case "streaming":
      return ["Writing…"];
    case "stopped":
      return [`${time} · Stopped`];
    default:
      return [item.stopped ? `${time} · Stopped` : time];
  }
}

function renderItem(item: ChatItem): HTMLLIElement {
  let li = rows.get(item.key);
  if (!li) {
    li = el(
      "li",
      {},
      el("span", { class: "who" }),
      el("div", { class: "bubble content" }),
      el("div", { class: "meta" }),
    );
    rows.set(item.key, li);
  }
  li.dataset.clientId = item.clientId;
  li.dataset.role = item.role;
  li.dataset.status = item.status;
  li.dataset.stopped = String(Boolean(item.stopped));
  if (item.seq === null) delete li.dataset.seq;
  else li.dataset.seq = String(item.seq);
  const [who, bubble, meta] = li.children as unknown as [HTMLElement, HTMLElement, HTMLElement];
  who.textContent = item.role === "assistant" ? "Assistant" : "";
  who.hidden = item.role !== "assistant";
  if (bubble.textContent !== item.content) bubble.textContent = item.content;
  meta.replaceChildren(...statusLine(item));
  return li;
}

function renderMessages(items: readonly ChatItem[]): void {
  const list = ui.messages;
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 48;
  const keep = new Set<string>();
  let previous: Element | null = null;
  for (const item of items) {
    keep.add(item.key);
    const li = renderItem(item);
    const expected: Element | null = previous
      ? previous.nextElementSibling
      : list.firstElementChild;
    if (expected !== li) list.insertBefore(li, expected);
    previous = li;
  }
  for (const [key, li] of rows) {
    if (!keep.has(key)) {
      li.remove();
      rows.delete(key);
    }
  }
  const live = items.findLast((i) => i.status === "streaming");
  streaming = live && currentChat ? { chatId: currentChat, streamId: live.key } : undefined;
  ui.stop.hidden = !streaming;
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function showChat(chatId: string | undefined): void {
  chatCleanup?.();
  chatCleanup = undefined;
  const previous = currentChat;
  currentChat = chatId;
  if (previous && previous !== chatId) client?.closeChat({ chatId: previous }).catch(() => {});
  ui.chat.hidden = !chatId;
  ui.empty.hidden = Boolean(chatId);
  // The open chat is in the address, so a reload (or a shared link) opens it again.
  history.replaceState(null, "", chatId ? `#chat=${chatId}` : location.pathname);
  rows.clear();
  ui.messages.replaceChildren();
  streaming = undefined;
  ui.stop.hidden = true;
  renderSidebar();
  if (!chatId || !client) return;
  const store = client.chat(chatId);
  const render = () => {
    const snapshot = store.getSnapshot();
    // Deleted on another device, or a stale link: back to the start screen.
    if (snapshot.status === "deleted") {
      queueMicrotask(() => {
        if (currentChat === chatId) showChat(undefined);
      });
    } else if (currentChat === chatId) renderMessages(snapshot.items);
  };
  chatCleanup = store.subscribe(render);
  render();
  ui.messages.scrollTop = ui.messages.scrollHeight;
  ui.title.value = client.sidebar.getSnapshot().chats.find((c) => c.id === chatId)?.title ?? "";
  client.openChat({ chatId }).catch((e) => report("open", e));
  if (matchMedia("(min-width: 761px)").matches) ui.content.focus();
}

// ---------------------------------------------------------------------------------------------
// Actions

function newChat(): void {
  client
    ?.createChat({})
    .then(({ chat }) => {
      showChat(chat.id);
      closeDrawer();
      ui.content.focus();
    })
    .catch((err) => report("create", err));
}

function send(): void {
  const content = ui.content.value;
  if (!client || !currentChat || !content.trim()) return;
  ui.content.value = "";
  autosize();
  const chatId = currentChat;
  // A chat still named by default takes its first message as its title, like assistant apps
  // do. The rename and the send go at once: whichever commits last, every device ends with the
  // row as committed (sidebar entries carry a version, docs/protocol.md "Sidebar entries").
  const chat = client.sidebar.getSnapshot().chats.find((c) => c.id === chatId);
  if (chat && chat.title === DEFAULT_TITLE && !chat.lastMessage) {
    const title = content.trim().replace(/\s+/g, " ").slice(0, 60);
    client.renameChat({ chatId, title }).catch((err) => report("rename", err));
  }
  // Shown as pending at once; the outbox delivers it (also after being offline).
  client.sendMessage({ chatId, content }).catch((err) => report("send", err));
}

function autosize(): void {
  ui.content.style.height = "auto";
  ui.content.style.height = `${Math.min(ui.content.scrollHeight + 2, 160)}px`;
}

function openDrawer(): void {
  ui.app.classList.add("drawer-open");
  ui.menu.setAttribute("aria-expanded", "true");
}

function closeDrawer(): void {
  ui.app.classList.remove("drawer-open");
  ui.menu.setAttribute("aria-expanded", "false");
}

ui.signin.addEventListener("submit", (e) => {
  e.preventDefault();
  const userId = ui.userId.value.trim();
  if (userId) void signIn(userId);
});
ui.signout.addEventListener("click", () => void signOut({ forget: true }));
ui.menu.addEventListener("click", () =>
  ui.app.classList.contains("drawer-open") ? closeDrawer() : openDrawer(),
);
ui.scrim.addEventListener("click", closeDrawer);
ui.newChat.addEventListener("click", newChat);
ui.emptyNew.addEventListener("click", newChat);

ui.composer.addEventListener("submit", (e) => {
  e.preventDefault();
  send();
});
ui.content.addEventListener("keydown", (e) => {
  // Enter sends, Shift+Enter starts a new line (not while an IME is composing).
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    send();
  }
});
ui.content.addEventListener("input", autosize);

ui.stop.addEventListener("click", () => {
  if (!client || !streaming) return;
  client.stopReply(streaming).catch((err) => report("stop", err));
});

ui.rename.addEventListener("submit", (e) => {
  e.preventDefault();
  ui.title.blur();
});
ui.title.addEventListener("change", () => {
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

// Relative times in the sidebar move on by themselves.
setInterval(renderSidebar, 30_000);

renderState();
const remembered = localStorage.getItem(USER_KEY);
if (remembered) {
  ui.userId.value = remembered;
  void signIn(remembered);
}

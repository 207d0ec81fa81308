import { useChatClient, useConnection } from "@chat-backend/react";
import { useCallback, useEffect, useState } from "react";
import { linkChat, linkedChat, report } from "../lib.js";
import { ChatPane } from "./ChatPane.js";
import { ConnectionReason, ConnectionState } from "./Connection.js";
import { Sidebar } from "./Sidebar.js";

declare global {
  interface Window {
    /** The signed-in client, for poking at from the console (development only). */
    chatDemo?: { client: ReturnType<typeof useChatClient>; userId: string };
  }
}

/** The signed-in app: top bar, chat list (a drawer on phones), and the open chat. */
export function Shell({ userId, onSignOut }: { userId: string; onSignOut: () => void }) {
  const client = useChatClient();
  // The chat named in the address when the page loaded (a reload, or a link) opens first.
  const [open, setOpen] = useState<{ chatId: string | null; fresh: boolean }>(() => ({
    chatId: linkedChat(),
    fresh: false,
  }));
  const [drawerOpen, setDrawerOpen] = useState(false);
  // Nothing can be created without a session; the banner under the top bar says why.
  const signedOut = useConnection() === "signedOut";

  useEffect(() => linkChat(open.chatId), [open.chatId]);

  useEffect(() => {
    if (!client) return;
    window.chatDemo = { client, userId };
    return client.on("error", ({ error, context }) => report(context, error));
  }, [client, userId]);

  const show = useCallback((chatId: string | null, fresh = false) => {
    setOpen({ chatId, fresh });
    setDrawerOpen(false);
  }, []);

  const newChat = () => {
    client
      ?.createChat({})
      .then(({ chat }) => show(chat.id, true))
      .catch((err) => report("create", err));
  };

  return (
    <div id="app" className={drawerOpen ? "app drawer-open" : "app"}>
      <header className="topbar">
        <button
          id="menu"
          className="icon-button"
          type="button"
          aria-label="Chats"
          aria-expanded={drawerOpen}
          aria-controls="drawer"
          onClick={() => setDrawerOpen((o) => !o)}
        >
          <svg viewBox="0 0 24 24" width="22" height="22" aria-hidden="true">
            <path
              d="M3 6h18M3 12h18M3 18h18"
              stroke="currentColor"
              strokeWidth="2"
              strokeLinecap="round"
            />
          </svg>
        </button>
        <span className="brand">Assistant</span>
        <ConnectionState />
        <span id="whoami" className="whoami">
          {userId}
        </span>
        <button id="signout" className="text-button" type="button" onClick={onSignOut}>
          Sign out
        </button>
      </header>
      <ConnectionReason />

      <div className="layout">
        <aside id="drawer" className="drawer">
          <button
            id="new-chat"
            className="new-chat"
            type="button"
            onClick={newChat}
            disabled={signedOut}
          >
            <span aria-hidden="true">+</span> New chat
          </button>
          <Sidebar current={open.chatId} onOpen={show} />
        </aside>
        <button
          id="scrim"
          className="scrim"
          type="button"
          aria-label="Close the chat list"
          tabIndex={-1}
          hidden={!drawerOpen}
          onClick={() => setDrawerOpen(false)}
        />

        <main className="pane">
          {open.chatId ? (
            <ChatPane
              key={open.chatId}
              chatId={open.chatId}
              focus={open.fresh}
              onGone={() => show(null)}
            />
          ) : (
            <div id="empty" className="empty">
              <h2>What can I help with?</h2>
              {signedOut ? (
                <>
                  <p>Sign in to see your chats and start new ones.</p>
                  <button id="empty-signin" type="button" onClick={onSignOut}>
                    Sign in again
                  </button>
                </>
              ) : (
                <>
                  <p>Start a new chat, or pick one from the list.</p>
                  <button id="empty-new" type="button" onClick={newChat}>
                    New chat
                  </button>
                </>
              )}
            </div>
          )}
        </main>
      </div>
    </div>
  );
}

import { type ChatClient, type ChatClientOptions, createChatClient } from "@chat-backend/client";
import {
  createContext,
  createElement,
  type ReactNode,
  useContext,
  useEffect,
  useLayoutEffect,
  useMemo,
  useRef,
  useState,
} from "react";

export interface ChatProviderProps {
  /** Server origin, e.g. `https://chat.example.com`. */
  url: string;
  /**
   * The signed-in user's id (Clerk: `userId` from `useAuth()`), or null/undefined when signed
   * out. The provider keeps one client per user: a new id closes the old client and starts a
   * new one; null closes it.
   */
  userId: string | null | undefined;
  /** Returns a session token (Clerk: `getToken` from `useAuth()`). The latest one is used. */
  getToken: () => Promise<string | null>;
  /**
   * More client options (outbox storage, timeouts, …), read when a client is created (a
   * change takes effect with the next user).
   */
  options?: Omit<ChatClientOptions, "url" | "getToken"> | undefined;
  children?: ReactNode;
}

interface ProvidedClient {
  client: ChatClient | null;
  /** Whether a user is signed in (a client exists or is about to). */
  signedIn: boolean;
}

const ClientContext = createContext<ProvidedClient | null>(null);

/** The provider's client: null while signed out, during server rendering and before mount. */
export function useChatClient(): ChatClient | null {
  return useProvided().client;
}

/** @internal The provider's value; throws outside a `<ChatProvider>`. */
export function useProvided(): ProvidedClient {
  const value = useContext(ClientContext);
  if (!value) throw new Error("@chat-backend/react: wrap your app in <ChatProvider>");
  return value;
}

// useLayoutEffect warns during server rendering; there, effects never run anyway.
const useIsomorphicLayoutEffect = typeof document === "undefined" ? useEffect : useLayoutEffect;

interface Owned {
  key: string;
  client: ChatClient;
  /** A close scheduled by an effect cleanup, cancelled if the same user mounts again. */
  closeTimer: ReturnType<typeof setTimeout> | undefined;
}

/**
 * Owns one `ChatClient` for the signed-in user and gives it to the hooks below it.
 *
 * The client is created in an effect (never during render, so server rendering and render
 * retries create none) and closed when the user changes or the provider unmounts. StrictMode's
 * mount, unmount, mount keeps the first client: the close is deferred and cancelled by the
 * second mount, so one socket is opened, not two.
 */
export function ChatProvider(props: ChatProviderProps): ReactNode {
  const { url, userId, children } = props;
  const getToken = useRef(props.getToken);
  const options = useRef(props.options);
  useIsomorphicLayoutEffect(() => {
    getToken.current = props.getToken;
    options.current = props.options;
  });
  const owned = useRef<Owned | null>(null);
  const [active, setActive] = useState<Owned | null>(null);
  const key = userId ? `${url}\u0000${userId}` : null;

  useEffect(() => {
    if (!key) {
      setActive(null);
      return;
    }
    let mine = owned.current;
    if (mine && mine.key === key) {
      if (mine.closeTimer !== undefined) clearTimeout(mine.closeTimer);
      mine.closeTimer = undefined;
    } else {
      if (mine) closeNow(mine);
      mine = {
        key,
        client: createChatClient({
          ...options.current,
          url,
          getToken: () => getToken.current(),
        }),
        closeTimer: undefined,
      };
      owned.current = mine;
    }
    setActive(mine);
    const current = mine;
    return () => {
      current.closeTimer = setTimeout(() => {
        if (owned.current === current) owned.current = null;
        closeNow(current);
      }, 0);
    };
  }, [url, key]);

  // A client is given only to the user it belongs to (not for a render after a switch).
  const client = active && active.key === key ? active.client : null;
  const value = useMemo(() => ({ client, signedIn: key !== null }), [client, key]);
  return createElement(ClientContext.Provider, { value }, children);
}

function closeNow(owned: Owned): void {
  if (owned.closeTimer !== undefined) clearTimeout(owned.closeTimer);
  owned.closeTimer = undefined;
  owned.client.close().catch(() => {});
}

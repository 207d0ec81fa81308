import { indexedDbOutboxStorage } from "@chat-backend/client";
import { ChatProvider } from "@chat-backend/react";
import { useCallback, useMemo, useState } from "react";
import { fetchToken, USER_KEY } from "../lib.js";
import { Shell } from "./Shell.js";
import { SignIn } from "./SignIn.js";

/**
 * Development sign-in (any user id, kept in localStorage so that a reload stays signed in) and
 * the provider that owns the signed-in user's client. In an app, `userId` and `getToken` come
 * from Clerk's `useAuth()`.
 */
export function App() {
  const [userId, setUserId] = useState<string | null>(() => localStorage.getItem(USER_KEY));
  const getToken = useCallback(
    () => (userId ? fetchToken(userId) : Promise.resolve(null)),
    [userId],
  );
  // Read when the provider creates the user's client: unsent messages survive a reload.
  const options = useMemo(
    () =>
      userId ? { outboxStorage: indexedDbOutboxStorage(`chat-demo-outbox-${userId}`) } : undefined,
    [userId],
  );
  const signIn = useCallback((id: string) => {
    localStorage.setItem(USER_KEY, id);
    setUserId(id);
  }, []);
  const signOut = useCallback(() => {
    localStorage.removeItem(USER_KEY);
    setUserId(null);
  }, []);

  if (!userId) return <SignIn onSignIn={signIn} />;
  return (
    <ChatProvider url={location.origin} userId={userId} getToken={getToken} options={options}>
      <Shell userId={userId} onSignOut={signOut} />
    </ChatProvider>
  );
}

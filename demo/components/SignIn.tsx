import { type FormEvent, useState } from "react";

/** Shown until a user is signed in (development sign-in: any user id). */
export function SignIn({ onSignIn }: { onSignIn: (userId: string) => void }) {
  const [userId, setUserId] = useState("user_demo");
  const submit = (e: FormEvent) => {
    e.preventDefault();
    const id = userId.trim();
    if (id) onSignIn(id);
  };
  return (
    <section id="signin-screen" className="signin-screen">
      <form id="signin" className="signin-card" onSubmit={submit}>
        <h1>Assistant</h1>
        <p className="hint">
          Development sign-in: pick any user id. Open this page in a second window (or on your
          phone) with the same id to see every device stay in step.
        </p>
        <label htmlFor="user-id">User id</label>
        <input
          id="user-id"
          name="userId"
          value={userId}
          onChange={(e) => setUserId(e.target.value)}
          autoComplete="username"
        />
        <button type="submit">Sign in</button>
      </form>
    </section>
  );
}

import type { ConnectionState as State } from "@chat-backend/client";
import { useConnectionStatus } from "@chat-backend/react";

const labels: Record<State, string> = {
  connecting: "connecting…",
  online: "online",
  offline: "offline",
  reauthenticating: "reconnecting…",
  signedOut: "signed out",
};

/** The connection state as a pill in the top bar (its reason as the tooltip). */
export function ConnectionState() {
  const status = useConnectionStatus();
  return (
    <span
      id="state"
      className="state"
      data-state={status.state}
      data-code={status.code}
      title={`${status.message} (${status.code})`}
      role="status"
    >
      {labels[status.state]}
    </span>
  );
}

/** What a person is told first, by state; the SDK's reason follows as the detail. */
const headlines: Record<Exclude<State, "online">, string> = {
  connecting: "Connecting…",
  offline: "You are offline",
  reauthenticating: "Renewing your session…",
  signedOut: "You are signed out",
};

/**
 * Why the client is not online, under the top bar: a headline for people, what to do, and the
 * SDK's `connectionStatus` as the detail (`message` and `code`). Not shown while online, nor
 * for the first connect of a load.
 */
export function ConnectionReason() {
  const { state, code, message } = useConnectionStatus();
  if (state === "online" || code === "STARTING") return null;
  return (
    <p id="connection-reason" className="connection-reason" data-state={state} data-code={code}>
      <span className="reason-headline">{headlines[state]}</span>
      {state === "offline" ? (
        <span className="reason-hint">Messages you send wait here and go out when it is back.</span>
      ) : state === "signedOut" ? (
        <span className="reason-hint">
          This device has no session for this user: sign out, then sign in again or with another id.
        </span>
      ) : null}
      <span className="reason-detail">
        <span className="reason-message">{message}</span>{" "}
        <code className="reason-code">{code}</code>
      </span>
    </p>
  );
}

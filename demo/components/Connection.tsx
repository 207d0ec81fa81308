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

/**
 * Why the client is not online, under the top bar: the SDK's `connectionStatus` (`message` for
 * people, `code` for programs). Not shown while online, nor for the first connect of a load.
 */
export function ConnectionReason() {
  const { state, code, message } = useConnectionStatus();
  if (state === "online" || code === "STARTING") return null;
  return (
    <p id="connection-reason" className="connection-reason" data-state={state} data-code={code}>
      <span className="reason-message">{message}</span>
      {state === "offline" ? (
        <span className="reason-hint">Messages you send wait here and go out when it is back.</span>
      ) : state === "signedOut" ? (
        <span className="reason-hint">No token for this user: sign out and pick another id.</span>
      ) : null}
      <code className="reason-code">{code}</code>
    </p>
  );
}

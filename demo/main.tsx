/**
 * The demo app: an assistant chat on @chat-backend/react, under StrictMode. Served in
 * development by server/src/http/demo.ts (bundled with esbuild at start). The reference app
 * of the React package: every device of a user shows the same thing (docs/sdk.md, "The demo").
 */
import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { App } from "./components/App.js";

const root = document.getElementById("root");
if (!root) throw new Error("missing #root");
createRoot(root).render(
  <StrictMode>
    <App />
  </StrictMode>,
);

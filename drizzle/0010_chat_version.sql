-- Custom migration: chat_sessions.version, a per-chat counter that every change to the row
-- raises (a rename, and each stored message through the triggers' updates), so that of two
-- sidebar entries for one chat a device can tell the newer (events from several nodes arrive in
-- any order; docs/protocol.md, "Sidebar entries"). Set by the database only: the API roles
-- cannot write it (no column privilege), and the trigger overrides any value written.
ALTER TABLE public.chat_sessions ADD COLUMN IF NOT EXISTS version bigint NOT NULL DEFAULT 1;
--> statement-breakpoint
-- The timestamp trigger of 0002_triggers.sql, now also raising the version. CREATE OR REPLACE
-- keeps the function's privileges (0005_exact_privileges.sql: callable by no API role).
CREATE OR REPLACE FUNCTION public.update_chat_sessions_timestamp() RETURNS trigger
LANGUAGE plpgsql
SET search_path = public, pg_temp
AS $$
BEGIN
  NEW.updated_at := now();
  NEW.version := OLD.version + 1;
  RETURN NEW;
END;
$$;

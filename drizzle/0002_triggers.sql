-- Custom migration: the seed's triggers, with its defects fixed (DESIGN.md, "Defects in the
-- seed schema"). Every function that writes another table is SECURITY DEFINER with a fixed
-- search_path: the counters it bumps are not writable by `authenticated` (defect 8), and the
-- bump must happen whoever inserts the row.

-- users.updated_at follows every change to the row.
CREATE OR REPLACE FUNCTION public.update_user_timestamp() RETURNS trigger
LANGUAGE plpgsql
SET search_path = public, pg_temp
AS $$
BEGIN
  NEW.updated_at := now();
  RETURN NEW;
END;
$$;
--> statement-breakpoint
CREATE OR REPLACE TRIGGER update_users_timestamp
  BEFORE UPDATE ON public.users
  FOR EACH ROW EXECUTE FUNCTION public.update_user_timestamp();
--> statement-breakpoint
-- chat_sessions.updated_at follows every change to the row, including the last_message update
-- below, which is what moves a chat to the top of the sidebar.
CREATE OR REPLACE FUNCTION public.update_chat_sessions_timestamp() RETURNS trigger
LANGUAGE plpgsql
SET search_path = public, pg_temp
AS $$
BEGIN
  NEW.updated_at := now();
  RETURN NEW;
END;
$$;
--> statement-breakpoint
CREATE OR REPLACE TRIGGER trigger_update_chat_sessions_timestamp
  BEFORE UPDATE ON public.chat_sessions
  FOR EACH ROW EXECUTE FUNCTION public.update_chat_sessions_timestamp();
--> statement-breakpoint
-- A new chat bumps total_conversations and becomes the user's last session. The seed had two
-- triggers doing this (trigger_update_user_conversations and on_chat_session_created), which
-- counted every chat twice (defect 1): this is the only one.
CREATE OR REPLACE FUNCTION public.update_user_stats_on_session() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
BEGIN
  UPDATE public.users
     SET total_conversations = total_conversations + 1,
         last_session_id = NEW.id
   WHERE id = NEW.user_id;
  RETURN NEW;
END;
$$;
--> statement-breakpoint
CREATE OR REPLACE TRIGGER on_chat_session_created
  AFTER INSERT ON public.chat_sessions
  FOR EACH ROW EXECUTE FUNCTION public.update_user_stats_on_session();
--> statement-breakpoint
-- A new message takes the next position in its chat (defect 3: one stable total order).
-- Locking the chat's row first, and holding it to commit, means concurrent writers to one
-- chat get consecutive numbers and commit in that order: a reader that has seen seq N can
-- never later find a committed N-1. A failed insert rolls its number back with it.
-- A row that will conflict on (session_id, client_id) -- a retried send, which INSERT … ON
-- CONFLICT DO NOTHING then skips -- takes no number, so it leaves no gap and does not move
-- the chat in the sidebar. The duplicate check runs after the lock, with a fresh snapshot,
-- so it also sees a duplicate committed by a writer that held the lock before us.
CREATE OR REPLACE FUNCTION public.assign_chat_message_seq() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
DECLARE
  next_seq bigint;
BEGIN
  PERFORM 1 FROM public.chat_sessions WHERE id = NEW.session_id FOR UPDATE;
  IF NOT FOUND THEN
    -- No such chat: leave seq alone and let the foreign key reject the row.
    RETURN NEW;
  END IF;
  IF EXISTS (SELECT 1 FROM public.chat_memory
              WHERE session_id = NEW.session_id AND client_id = NEW.client_id) THEN
    -- A duplicate: the unique index rejects (or ON CONFLICT skips) this row.
    RETURN NEW;
  END IF;
  UPDATE public.chat_sessions
     SET last_seq = last_seq + 1
   WHERE id = NEW.session_id
  RETURNING last_seq INTO next_seq;
  NEW.seq := next_seq;
  RETURN NEW;
END;
$$;
--> statement-breakpoint
CREATE OR REPLACE TRIGGER before_chat_message_created
  BEFORE INSERT ON public.chat_memory
  FOR EACH ROW EXECUTE FUNCTION public.assign_chat_message_seq();
--> statement-breakpoint
-- After a message is stored: the chat's last_message and updated_at (so the sidebar is right
-- whoever wrote the message, defect 11) and the user's lifetime message_count, all in the
-- insert's own transaction. AFTER, not BEFORE, so that a row skipped by ON CONFLICT DO
-- NOTHING does not become the preview.
CREATE OR REPLACE FUNCTION public.update_user_message_count() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
DECLARE
  owner_id uuid;
BEGIN
  UPDATE public.chat_sessions
     SET last_message = NEW.message
   WHERE id = NEW.session_id
  RETURNING user_id INTO owner_id;

  UPDATE public.users
     SET message_count = message_count + 1
   WHERE id = owner_id;
  RETURN NEW;
END;
$$;
--> statement-breakpoint
CREATE OR REPLACE TRIGGER on_chat_message_created
  AFTER INSERT ON public.chat_memory
  FOR EACH ROW EXECUTE FUNCTION public.update_user_message_count();
--> statement-breakpoint
-- A recorded search bumps the user's lifetime total_searches.
CREATE OR REPLACE FUNCTION public.update_user_search_count() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
BEGIN
  UPDATE public.users
     SET total_searches = total_searches + 1
   WHERE id = NEW.user_id;
  RETURN NEW;
END;
$$;
--> statement-breakpoint
CREATE OR REPLACE TRIGGER on_search_session_created
  AFTER INSERT ON public.search_sessions
  FOR EACH ROW EXECUTE FUNCTION public.update_user_search_count();
--> statement-breakpoint
-- Trigger functions are called by the triggers only.
REVOKE ALL ON FUNCTION
  public.update_user_timestamp(),
  public.update_chat_sessions_timestamp(),
  public.update_user_stats_on_session(),
  public.assign_chat_message_seq(),
  public.update_user_message_count(),
  public.update_user_search_count()
FROM PUBLIC;

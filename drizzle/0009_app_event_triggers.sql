-- Custom migration: the transactional outbox (docs/service-api.md, "Webhooks to your backend";
-- docs/schema.md). Events for the app's backend are written by the database in the transaction
-- of the change they describe, so an acknowledged message always has its event and a rolled-back
-- one never has. Each event is one app_events row (the per-chat order) plus one graphile-worker
-- job per chat (the delivery), deduplicated by the job key `app_events:<chat id>`.
--
-- graphile-worker installs its own schema when a node with APP_WEBHOOK_URL starts, before it sets
-- app_event_settings.enabled; the functions below reach it only when enabled, so this migration
-- and every insert work without it.

-- The single settings row: enqueueing is off until a node with a webhook URL turns it on.
INSERT INTO public.app_event_settings (id, enabled) VALUES (true, false) ON CONFLICT (id) DO NOTHING;
--> statement-breakpoint
-- The outbox is the server's business only: no API role may read or write it (the payloads hold
-- every user's messages). The SECURITY DEFINER functions below write it whoever inserts.
REVOKE ALL ON public.app_events, public.app_event_settings, public.app_event_nodes FROM PUBLIC;
--> statement-breakpoint
DO $$
DECLARE
  r text;
BEGIN
  FOREACH r IN ARRAY ARRAY['anon', 'authenticated', 'service_role'] LOOP
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
      EXECUTE format(
        'REVOKE ALL ON public.app_events, public.app_event_settings, public.app_event_nodes FROM %I', r);
    END IF;
  END LOOP;
END
$$;
--> statement-breakpoint
-- Wakes the delivery of each chat: one graphile-worker job per chat, in a queue of its own (jobs
-- of one queue run one at a time, on any node), keyed so that a chat with a job waiting gets no
-- second one. preserve_run_at: a job waiting out a backoff keeps its time. plpgsql, not SQL, so
-- that the body is not checked against graphile-worker's schema before that schema exists.
CREATE OR REPLACE FUNCTION public.schedule_app_event_delivery(chat_ids uuid[]) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
BEGIN
  PERFORM graphile_worker.add_jobs(
    array_agg(ROW('deliver_app_events', json_build_object('chatId', c), 'app_events:' || c,
                  NULL, NULL, 'app_events:' || c, NULL, NULL)::graphile_worker.job_spec),
    true)
  FROM unnest(chat_ids) AS c;
END;
$$;
--> statement-breakpoint
-- One event with no row of its own (a stop request, services/app-events.ts): stored and its
-- chat's delivery woken in one statement. Returns the event id, or NULL when enqueueing is off.
CREATE OR REPLACE FUNCTION public.enqueue_app_event(p_chat_id uuid, p_type text, p_data jsonb)
RETURNS uuid
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
DECLARE
  v_event_id uuid;
BEGIN
  IF NOT coalesce((SELECT enabled FROM public.app_event_settings WHERE id), false) THEN
    RETURN NULL;
  END IF;
  INSERT INTO public.app_events (chat_id, type, data)
  VALUES (p_chat_id, p_type, p_data)
  RETURNING event_id INTO v_event_id;
  PERFORM public.schedule_app_event_delivery(ARRAY[p_chat_id]);
  RETURN v_event_id;
END;
$$;
--> statement-breakpoint
-- `message.created` for every user message a statement stored. Statement-level with a transition
-- table: the send path stores many messages per statement, and this costs one insert and one
-- add_jobs per statement, not per row. Rows skipped by ON CONFLICT DO NOTHING (a retried send)
-- are not in new_rows, so a retry never makes a second event. The payload carries what the
-- backend needs to act without a round trip: the owner's Clerk id, the chat's title, and the
-- message exactly as the socket protocol's ChatMessage.
CREATE OR REPLACE FUNCTION public.enqueue_message_created_events() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
DECLARE
  v_chats uuid[];
BEGIN
  IF NOT coalesce((SELECT enabled FROM public.app_event_settings WHERE id), false) THEN
    RETURN NULL;
  END IF;
  WITH inserted AS (
    INSERT INTO public.app_events (chat_id, type, data)
    SELECT m.session_id, 'message.created', jsonb_build_object(
             'userId', u.clerk_id,
             'chatId', m.session_id,
             'chat', jsonb_build_object('title', c.title),
             'message', jsonb_build_object(
               'id', m.id,
               'chatId', m.session_id,
               'seq', m.seq,
               'clientId', m.client_id,
               'role', 'user',
               'content', m.message ->> 'content',
               'createdAt', to_char(m.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')))
      FROM new_rows m
      JOIN public.chat_sessions c ON c.id = m.session_id
      JOIN public.users u ON u.id = c.user_id
     WHERE m.message ->> 'role' = 'user'
     ORDER BY m.session_id, m.seq
    RETURNING chat_id
  )
  SELECT array_agg(DISTINCT chat_id) INTO v_chats FROM inserted;
  IF v_chats IS NOT NULL THEN
    PERFORM public.schedule_app_event_delivery(v_chats);
  END IF;
  RETURN NULL;
END;
$$;
--> statement-breakpoint
DROP TRIGGER IF EXISTS on_chat_messages_enqueue_events ON public.chat_memory;
--> statement-breakpoint
CREATE TRIGGER on_chat_messages_enqueue_events
  AFTER INSERT ON public.chat_memory
  REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION public.enqueue_message_created_events();
--> statement-breakpoint
-- `chat.deleted` for every chat a statement deleted, so the backend drops its work. A chat
-- deleted by the cascade of its user's deletion is handled by the users trigger below instead:
-- by the time this runs the owner's row (and Clerk id) is gone, hence the join.
CREATE OR REPLACE FUNCTION public.enqueue_chat_deleted_events() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
DECLARE
  v_chats uuid[];
BEGIN
  IF NOT coalesce((SELECT enabled FROM public.app_event_settings WHERE id), false) THEN
    RETURN NULL;
  END IF;
  WITH inserted AS (
    INSERT INTO public.app_events (chat_id, type, data)
    SELECT o.id, 'chat.deleted', jsonb_build_object('userId', u.clerk_id, 'chatId', o.id)
      FROM old_rows o
      JOIN public.users u ON u.id = o.user_id
     ORDER BY o.id
    RETURNING chat_id
  )
  SELECT array_agg(chat_id) INTO v_chats FROM inserted;
  IF v_chats IS NOT NULL THEN
    PERFORM public.schedule_app_event_delivery(v_chats);
  END IF;
  RETURN NULL;
END;
$$;
--> statement-breakpoint
DROP TRIGGER IF EXISTS on_chats_deleted_enqueue_events ON public.chat_sessions;
--> statement-breakpoint
CREATE TRIGGER on_chats_deleted_enqueue_events
  AFTER DELETE ON public.chat_sessions
  REFERENCING OLD TABLE AS old_rows
  FOR EACH STATEMENT EXECUTE FUNCTION public.enqueue_chat_deleted_events();
--> statement-breakpoint
-- A deleted user's chats go with them (ON DELETE CASCADE): `chat.deleted` for each, written
-- while the user's Clerk id can still be read. User deletions are rare; per row is fine.
CREATE OR REPLACE FUNCTION public.enqueue_user_chats_deleted_events() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
DECLARE
  v_chats uuid[];
BEGIN
  IF NOT coalesce((SELECT enabled FROM public.app_event_settings WHERE id), false) THEN
    RETURN OLD;
  END IF;
  WITH inserted AS (
    INSERT INTO public.app_events (chat_id, type, data)
    SELECT c.id, 'chat.deleted', jsonb_build_object('userId', OLD.clerk_id, 'chatId', c.id)
      FROM public.chat_sessions c
     WHERE c.user_id = OLD.id
     ORDER BY c.id
    RETURNING chat_id
  )
  SELECT array_agg(chat_id) INTO v_chats FROM inserted;
  IF v_chats IS NOT NULL THEN
    PERFORM public.schedule_app_event_delivery(v_chats);
  END IF;
  RETURN OLD;
END;
$$;
--> statement-breakpoint
DROP TRIGGER IF EXISTS on_user_deleted_enqueue_events ON public.users;
--> statement-breakpoint
CREATE TRIGGER on_user_deleted_enqueue_events
  BEFORE DELETE ON public.users
  FOR EACH ROW EXECUTE FUNCTION public.enqueue_user_chats_deleted_events();
--> statement-breakpoint
-- Called by the triggers and by the server (as the owner) only.
REVOKE ALL ON FUNCTION
  public.schedule_app_event_delivery(uuid[]),
  public.enqueue_app_event(uuid, text, jsonb),
  public.enqueue_message_created_events(),
  public.enqueue_chat_deleted_events(),
  public.enqueue_user_chats_deleted_events()
FROM PUBLIC;

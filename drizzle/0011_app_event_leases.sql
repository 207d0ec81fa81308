-- Custom migration: the outbox's delivery without a job queue's per-statement NOTIFY
-- (docs/service-api.md, "Why a lease table, not graphile-worker"; figures in docs/benchmarks.md).
--
-- Until now every trigger also called graphile_worker.add_jobs, whose pg_notify makes each
-- inserting transaction take Postgres's database-wide notify lock at commit, held through the
-- WAL flush: notifying transactions commit one at a time, and single-row inserts ran at 0.22x.
-- Events are now only rows of app_events; the delivering nodes find them (an indexed scan of the
-- pending rows, at once on the node that stored them, every 250 ms on the others) and take a
-- chat at a time under a lease, a row of app_event_leases.
--
-- A lease row says "no node but node_id may deliver this chat before lease_until". Its holder
-- renews it every APP_WEBHOOK_NODE_TIMEOUT_MS / 5 and stops delivering before it could lapse,
-- so a dead node's chats are taken over when its leases lapse (APP_WEBHOOK_NODE_TIMEOUT_MS),
-- and no chat is delivered by two nodes at once. A chat waiting out a retry's backoff keeps a
-- row with no holder (node_id NULL) until its next attempt is due.
CREATE TABLE "app_event_leases" (
	"chat_id" uuid PRIMARY KEY NOT NULL,
	"node_id" text,
	"lease_until" timestamp with time zone NOT NULL
);
--> statement-breakpoint
-- Closed to the API roles like the rest of the outbox (only the server's owner role uses it).
REVOKE ALL ON public.app_event_leases FROM PUBLIC;
--> statement-breakpoint
DO $$
DECLARE
  r text;
BEGIN
  FOREACH r IN ARRAY ARRAY['anon', 'authenticated', 'service_role'] LOOP
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
      EXECUTE format('REVOKE ALL ON public.app_event_leases FROM %I', r);
    END IF;
  END LOOP;
END
$$;
--> statement-breakpoint
-- The heartbeats of graphile-worker's pools: leases replace them.
DROP TABLE IF EXISTS public.app_event_nodes;
--> statement-breakpoint
-- One event with no row of its own (a stop request): stored; returns its id, or NULL when
-- enqueueing is off. No wake-up in SQL: the storing node wakes its own delivery.
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
  RETURN v_event_id;
END;
$$;
--> statement-breakpoint
-- `message.created` for every user message a statement stored (as in 0009, without the job):
-- one INSERT … SELECT per statement, in (chat, seq) order so that ids follow each chat's seqs.
CREATE OR REPLACE FUNCTION public.enqueue_message_created_events() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
BEGIN
  IF NOT coalesce((SELECT enabled FROM public.app_event_settings WHERE id), false) THEN
    RETURN NULL;
  END IF;
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
   ORDER BY m.session_id, m.seq;
  RETURN NULL;
END;
$$;
--> statement-breakpoint
-- `chat.deleted` for every chat a statement deleted (as in 0009, without the job).
CREATE OR REPLACE FUNCTION public.enqueue_chat_deleted_events() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
BEGIN
  IF NOT coalesce((SELECT enabled FROM public.app_event_settings WHERE id), false) THEN
    RETURN NULL;
  END IF;
  INSERT INTO public.app_events (chat_id, type, data)
  SELECT o.id, 'chat.deleted', jsonb_build_object('userId', u.clerk_id, 'chatId', o.id)
    FROM old_rows o
    JOIN public.users u ON u.id = o.user_id
   ORDER BY o.id;
  RETURN NULL;
END;
$$;
--> statement-breakpoint
-- A deleted user's chats: `chat.deleted` for each (as in 0009, without the job).
CREATE OR REPLACE FUNCTION public.enqueue_user_chats_deleted_events() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
BEGIN
  IF NOT coalesce((SELECT enabled FROM public.app_event_settings WHERE id), false) THEN
    RETURN OLD;
  END IF;
  INSERT INTO public.app_events (chat_id, type, data)
  SELECT c.id, 'chat.deleted', jsonb_build_object('userId', OLD.clerk_id, 'chatId', c.id)
    FROM public.chat_sessions c
   WHERE c.user_id = OLD.id
   ORDER BY c.id;
  RETURN OLD;
END;
$$;
--> statement-breakpoint
-- graphile-worker is no longer used: its wake-up function and its schema go (the schema was
-- installed by the server at start, only for the outbox; nothing else uses it).
DROP FUNCTION IF EXISTS public.schedule_app_event_delivery(uuid[]);
--> statement-breakpoint
DROP SCHEMA IF EXISTS graphile_worker CASCADE;

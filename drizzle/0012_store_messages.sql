-- Custom migration: a batch of messages stored and its chats' sidebar entries read in one call
-- (issue #15, the cost per message).
--
-- store_messages(p_batch): p_batch is a JSON array of {u: owner's users.id, s: chat id,
-- c: clientId, m: the message}, in the order the messages go in (so the BEFORE INSERT trigger
-- gives each chat's messages consecutive seqs in that order). It inserts the messages of the
-- chats their owner owns, except clientIds already stored in their chat, and returns one row
-- per stored or already-stored message with its chat's row as this transaction leaves it: after
-- the triggers (last_message, last_seq, updated_at, version), and with every change that
-- committed before them (a rename the insert waited for). No other change to those chat rows
-- can come between that read and the commit: the triggers' updates hold the rows' locks until
-- it. A VOLATILE function's statements each take a new snapshot, so the second sees the
-- first's rows and its triggers' updates (AFTER ROW triggers fire at the end of their
-- statement). Rows go in sorted by (owner, chat) by the caller, so concurrent batches take
-- their locks in one order. One call, one round trip (it replaced a read-back after the commit).
-- SECURITY INVOKER, and no API role may call it: only the server (the owner) stores this way.
CREATE OR REPLACE FUNCTION public.store_messages(p_batch jsonb)
RETURNS TABLE (
  id uuid, session_id uuid, seq bigint, client_id text, message jsonb, created_at timestamptz,
  created_us text, duplicate boolean, user_id uuid, title text, chat_created_at timestamptz,
  updated_at timestamptz, updated_us text, last_message jsonb, last_seq bigint, version bigint
)
LANGUAGE plpgsql
VOLATILE
SECURITY INVOKER
SET search_path = public, pg_temp
AS $$
#variable_conflict use_column
DECLARE
  inserted uuid[];
BEGIN
  WITH input AS (
    SELECT (e->>'u')::uuid AS user_id, (e->>'s')::uuid AS session_id, e->>'c' AS client_id,
           e->'m' AS message, ord
      FROM jsonb_array_elements(p_batch) WITH ORDINALITY AS t(e, ord)
  ), mine AS (
    -- Only the chats each message's user owns.
    SELECT i.* FROM input i
      JOIN public.chat_sessions c ON c.id = i.session_id AND c.user_id = i.user_id
  ), rows AS (
    INSERT INTO public.chat_memory (session_id, client_id, message)
    SELECT i.session_id, i.client_id, i.message FROM mine i
     WHERE NOT EXISTS (SELECT 1 FROM public.chat_memory m
                        WHERE m.session_id = i.session_id AND m.client_id = i.client_id)
     ORDER BY i.ord
    RETURNING chat_memory.id
  )
  SELECT coalesce(array_agg(rows.id), '{}') INTO inserted FROM rows;

  RETURN QUERY
  SELECT m.id, m.session_id, m.seq, m.client_id, m.message, m.created_at,
         (extract(epoch FROM m.created_at) * 1000000)::bigint::text,
         NOT (m.id = ANY (inserted)),
         c.user_id, c.title, c.created_at, c.updated_at,
         (extract(epoch FROM c.updated_at) * 1000000)::bigint::text,
         c.last_message, c.last_seq, c.version
    FROM (SELECT DISTINCT e->>'c' AS client_id, (e->>'s')::uuid AS session_id,
                 (e->>'u')::uuid AS user_id
            FROM jsonb_array_elements(p_batch) AS t(e)) i
    JOIN public.chat_sessions c ON c.id = i.session_id AND c.user_id = i.user_id
    JOIN public.chat_memory m ON m.session_id = i.session_id AND m.client_id = i.client_id
   ORDER BY m.session_id, m.seq;
END
$$;
--> statement-breakpoint
COMMENT ON FUNCTION public.store_messages(jsonb) IS 'The send path''s insert of a batch of messages, with their chats'' rows after it; server-only.';
--> statement-breakpoint
-- Functions are executable by PUBLIC by default, and Supabase's default privileges grant new
-- functions to anon, authenticated and service_role: take it all back.
REVOKE ALL ON FUNCTION public.store_messages(jsonb) FROM PUBLIC;
--> statement-breakpoint
DO $$
DECLARE
  r text;
BEGIN
  FOREACH r IN ARRAY ARRAY['anon', 'authenticated', 'service_role'] LOOP
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
      EXECUTE format('REVOKE ALL ON FUNCTION public.store_messages(jsonb) FROM %I', r);
    END IF;
  END LOOP;
END
$$;

-- Custom migration: the seed's helper functions, same names, arguments and result columns.
--
-- Defect 10: the seed made them SECURITY DEFINER and trusted p_clerk_id, so any caller could
-- read anyone's history. They are SECURITY INVOKER now: they run under the caller's row-level
-- security, so `authenticated` gets its own rows only (another user's id yields no rows),
-- `service_role` gets any user's, and the server's own connection (the table owner) is
-- unaffected.
--
-- Defect 11: the history reads chat_sessions.last_message, which the message trigger keeps
-- current, instead of a subquery per row.

CREATE OR REPLACE FUNCTION public.get_user_chat_history(p_clerk_id text)
RETURNS TABLE (
  session_id uuid,
  title text,
  last_message jsonb,
  created_at timestamp with time zone,
  updated_at timestamp with time zone
)
LANGUAGE sql
STABLE
SECURITY INVOKER
SET search_path = public, pg_temp
AS $$
  SELECT cs.id, cs.title, cs.last_message, cs.created_at, cs.updated_at
    FROM public.chat_sessions cs
    JOIN public.users u ON u.id = cs.user_id
   WHERE u.clerk_id = p_clerk_id
   ORDER BY cs.updated_at DESC, cs.id DESC;
$$;
--> statement-breakpoint
-- token_usage is bigint (see the schema); the other columns are as in the seed.
CREATE OR REPLACE FUNCTION public.get_user_stats(p_clerk_id text)
RETURNS TABLE (
  total_conversations integer,
  total_searches integer,
  message_count integer,
  token_usage bigint,
  subscription_tier text,
  subscription_status text
)
LANGUAGE sql
STABLE
SECURITY INVOKER
SET search_path = public, pg_temp
AS $$
  SELECT u.total_conversations, u.total_searches, u.message_count, u.token_usage,
         u.subscription_tier, u.subscription_status
    FROM public.users u
   WHERE u.clerk_id = p_clerk_id;
$$;
--> statement-breakpoint
REVOKE ALL ON FUNCTION public.get_user_chat_history(text), public.get_user_stats(text) FROM PUBLIC;
--> statement-breakpoint
GRANT EXECUTE ON FUNCTION public.get_user_chat_history(text), public.get_user_stats(text)
  TO authenticated, service_role;

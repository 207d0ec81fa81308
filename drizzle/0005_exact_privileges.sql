-- Custom migration: exact privileges on this project's tables and functions, whatever the
-- database granted by default, and a user's own messages checked by the database (issue #11,
-- items 1 and 2; docs/schema.md "Privileges" and "Running on Supabase").
--
-- Why: Supabase's default privileges grant ALL on every new table, sequence and function in
-- `public` to anon, authenticated and service_role. 0004 only added grants and never revoked,
-- so on Supabase a signed-in user could raise their own subscription_tier, reset token_usage,
-- set a chat's last_seq, and anon or authenticated could TRUNCATE chat_memory (RLS does not
-- apply to TRUNCATE). Plain Postgres grants nothing by default, which hid it. So here every
-- privilege on the four tables and on this project's functions is revoked from PUBLIC and from
-- the API roles, and exactly what docs/schema.md promises is granted again. Running it again
-- ends in the same state.
--
-- Left alone on purpose:
--   * ALTER DEFAULT PRIVILEGES: they are the operator's setting for every table of their
--     project (Supabase's dashboard relies on them), not an object of ours. Each migration that
--     creates a table or function revokes on it itself (docs/schema.md, "Changing the schema").
--   * Objects this project did not create: Supabase's own auth.* functions, the schemas, and
--     grants to roles other than PUBLIC, anon, authenticated and service_role.
-- Must run as the owner of the tables (as every migration here does): REVOKE by anyone else
-- removes only the grants that role made. The last statement checks the result and fails the
-- migration, naming the grant, if anything it could not remove is left.

-- What a user may store as a message of their own through RLS: exactly what `message:send`
-- accepts (protocol/index.ts contentSchema), because a row in chat_memory goes straight into
-- the model's context through the service API. An object with exactly the keys `role` and
-- `content` (no `name`, `tool_calls` or anything else a model API might honour); `role` exactly
-- "user"; `content` a string of 1 to 64,000 characters (Limits.MAX_MESSAGE_CHARS; Unicode code
-- points, which is how both zod and char_length count) that is not blank by JavaScript's
-- String.prototype.trim. NUL and lone surrogates cannot be stored in text at all.
-- The server and service_role may still write any role (assistant replies, system notes): the
-- check is in the `authenticated` insert policy only.
CREATE OR REPLACE FUNCTION public.is_user_message(message jsonb) RETURNS boolean
LANGUAGE plpgsql
IMMUTABLE
PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  content text;
BEGIN
  IF jsonb_typeof(message) IS DISTINCT FROM 'object'
     OR message - 'role' - 'content' <> '{}'::jsonb
     OR message -> 'role' IS DISTINCT FROM '"user"'::jsonb
     OR jsonb_typeof(message -> 'content') IS DISTINCT FROM 'string' THEN
    RETURN false;
  END IF;
  content := message ->> 'content';
  -- Not blank: some character outside JavaScript's whitespace and line terminators.
  IF content !~ E'[^\\u0009-\\u000d\\u0020\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff]' THEN
    RETURN false;
  END IF;
  -- Characters are code points, as the protocol's schema (zod) counts them.
  RETURN char_length(content) <= 64000;
END;
$$;
--> statement-breakpoint
COMMENT ON FUNCTION public.is_user_message(jsonb) IS
  'True when a chat_memory.message is what message:send accepts from a user (role user, non-blank content of at most 64,000 characters, no other keys). Used by the authenticated insert policy.';
--> statement-breakpoint
-- Everything, from everyone but the owner. CASCADE also removes what a role passed on with a
-- grant option.
REVOKE ALL ON TABLE public.users, public.chat_sessions, public.chat_memory, public.search_sessions
  FROM PUBLIC CASCADE;
--> statement-breakpoint
REVOKE ALL ON FUNCTION
  public.get_user_chat_history(text),
  public.get_user_stats(text),
  public.is_user_message(jsonb),
  public.update_user_timestamp(),
  public.update_chat_sessions_timestamp(),
  public.update_user_stats_on_session(),
  public.assign_chat_message_seq(),
  public.update_user_message_count(),
  public.update_user_search_count()
FROM PUBLIC CASCADE;
--> statement-breakpoint
-- anon exists on Supabase only; authenticated and service_role always exist (0001).
DO $$
DECLARE
  api_role text;
BEGIN
  FOR api_role IN
    SELECT rolname FROM pg_roles WHERE rolname IN ('anon', 'authenticated', 'service_role')
  LOOP
    EXECUTE format(
      'REVOKE ALL ON TABLE public.users, public.chat_sessions, public.chat_memory, '
      'public.search_sessions FROM %I CASCADE', api_role);
    EXECUTE format(
      'REVOKE ALL ON FUNCTION public.get_user_chat_history(text), public.get_user_stats(text), '
      'public.is_user_message(jsonb), public.update_user_timestamp(), '
      'public.update_chat_sessions_timestamp(), public.update_user_stats_on_session(), '
      'public.assign_chat_message_seq(), public.update_user_message_count(), '
      'public.update_user_search_count() FROM %I CASCADE', api_role);
  END LOOP;
END
$$;
--> statement-breakpoint
-- Exactly docs/schema.md, "Privileges". service_role: rows of every table, never TRUNCATE,
-- REFERENCES or TRIGGER.
GRANT SELECT, INSERT, UPDATE, DELETE ON public.users, public.chat_sessions, public.chat_memory,
  public.search_sessions TO service_role;
--> statement-breakpoint
-- authenticated: reads (RLS narrows them to the user's own rows) and the column-limited writes
-- of defect 8 and 9. Counters, tier, token_usage, last_message, last_seq and seq are written by
-- the SECURITY DEFINER triggers only.
GRANT SELECT ON public.users, public.chat_sessions, public.chat_memory, public.search_sessions
  TO authenticated;
--> statement-breakpoint
GRANT UPDATE (email, avatar_url, last_seen_at) ON public.users TO authenticated;
--> statement-breakpoint
GRANT INSERT (id, user_id, title), UPDATE (title), DELETE ON public.chat_sessions TO authenticated;
--> statement-breakpoint
GRANT INSERT (id, session_id, message, client_id) ON public.chat_memory TO authenticated;
--> statement-breakpoint
GRANT INSERT (id, user_id, filters, results, results_count, status) ON public.search_sessions
  TO authenticated;
--> statement-breakpoint
GRANT EXECUTE ON FUNCTION public.get_user_chat_history(text), public.get_user_stats(text)
  TO authenticated, service_role;
--> statement-breakpoint
-- The insert policy below calls it as the inserting user.
GRANT EXECUTE ON FUNCTION public.is_user_message(jsonb) TO authenticated;
--> statement-breakpoint
-- Issue #11, item 2: a user inserting directly (PostgREST, supabase-js) is held to what the
-- protocol accepts from them: role "user", the content limits, and a client_id the protocol
-- allows (clientIdSchema; the column's own check already limits it to 128 characters).
ALTER POLICY "Users can insert messages to their own sessions" ON public.chat_memory
  WITH CHECK (
    session_id IN (
      SELECT cs.id FROM public.chat_sessions cs
        JOIN public.users u ON u.id = cs.user_id
       WHERE u.clerk_id = (SELECT auth.jwt() ->> 'sub'))
    AND public.is_user_message(message)
    AND client_id ~ '^[A-Za-z0-9._:-]+$'
  );
--> statement-breakpoint
-- The result, checked: PUBLIC, anon, authenticated and service_role hold exactly the grants
-- above on the four tables and their columns, no grant option, and EXECUTE only where granted.
-- Anything else (a grant another role made, which the owner's REVOKE cannot remove) fails the
-- migration with its name instead of leaving the database open.
DO $$
DECLARE
  leftover text;
BEGIN
  WITH expected(tbl, col, grantee, privilege) AS (
    VALUES
      ('users', '', 'authenticated', 'SELECT'),
      ('chat_sessions', '', 'authenticated', 'SELECT'),
      ('chat_memory', '', 'authenticated', 'SELECT'),
      ('search_sessions', '', 'authenticated', 'SELECT'),
      ('chat_sessions', '', 'authenticated', 'DELETE'),
      ('users', 'email', 'authenticated', 'UPDATE'),
      ('users', 'avatar_url', 'authenticated', 'UPDATE'),
      ('users', 'last_seen_at', 'authenticated', 'UPDATE'),
      ('chat_sessions', 'id', 'authenticated', 'INSERT'),
      ('chat_sessions', 'user_id', 'authenticated', 'INSERT'),
      ('chat_sessions', 'title', 'authenticated', 'INSERT'),
      ('chat_sessions', 'title', 'authenticated', 'UPDATE'),
      ('chat_memory', 'id', 'authenticated', 'INSERT'),
      ('chat_memory', 'session_id', 'authenticated', 'INSERT'),
      ('chat_memory', 'message', 'authenticated', 'INSERT'),
      ('chat_memory', 'client_id', 'authenticated', 'INSERT'),
      ('search_sessions', 'id', 'authenticated', 'INSERT'),
      ('search_sessions', 'user_id', 'authenticated', 'INSERT'),
      ('search_sessions', 'filters', 'authenticated', 'INSERT'),
      ('search_sessions', 'results', 'authenticated', 'INSERT'),
      ('search_sessions', 'results_count', 'authenticated', 'INSERT'),
      ('search_sessions', 'status', 'authenticated', 'INSERT')
    UNION ALL
    SELECT t, '', 'service_role', p
      FROM unnest(ARRAY['users', 'chat_sessions', 'chat_memory', 'search_sessions']) t,
           unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE']) p
  ),
  held AS (
    SELECT c.relname::text AS tbl, ''::text AS col, a.grantee, a.privilege_type AS privilege,
           a.is_grantable
      FROM pg_class c, aclexplode(c.relacl) a
     WHERE c.relnamespace = 'public'::regnamespace
       AND c.relname IN ('users', 'chat_sessions', 'chat_memory', 'search_sessions')
    UNION ALL
    SELECT c.relname::text, att.attname::text, a.grantee, a.privilege_type, a.is_grantable
      FROM pg_class c
      JOIN pg_attribute att ON att.attrelid = c.oid AND att.attnum > 0 AND NOT att.attisdropped,
           aclexplode(att.attacl) a
     WHERE c.relnamespace = 'public'::regnamespace
       AND c.relname IN ('users', 'chat_sessions', 'chat_memory', 'search_sessions')
  ),
  named AS (
    SELECT h.*, CASE WHEN h.grantee = 0 THEN 'PUBLIC' ELSE r.rolname::text END AS grantee_name
      FROM held h LEFT JOIN pg_roles r ON r.oid = h.grantee
  )
  SELECT string_agg(format('%s on %s%s to %s', n.privilege, n.tbl,
                           CASE WHEN n.col = '' THEN '' ELSE '(' || n.col || ')' END,
                           n.grantee_name), ', ')
    INTO leftover
    FROM named n
   WHERE n.grantee_name IN ('PUBLIC', 'anon', 'authenticated', 'service_role')
     AND (n.is_grantable OR NOT EXISTS (
           SELECT 1 FROM expected e
            WHERE e.tbl = n.tbl AND e.col = n.col AND e.grantee = n.grantee_name
              AND e.privilege = n.privilege));
  IF leftover IS NOT NULL THEN
    RAISE EXCEPTION 'privileges the migration could not revoke are still granted: %', leftover
      USING HINT = 'Run the migrations as the owner of the tables, or revoke these grants as '
                   'the role that made them (docs/schema.md, "Running on Supabase").';
  END IF;

  SELECT string_agg(format('EXECUTE on %s to %s', f.oid::regprocedure, f.grantee_name), ', ')
    INTO leftover
    FROM (
      SELECT p.oid, p.proname, a.is_grantable,
             CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE r.rolname::text END AS grantee_name
        FROM pg_proc p
        CROSS JOIN LATERAL aclexplode(p.proacl) a
        LEFT JOIN pg_roles r ON r.oid = a.grantee
    ) f
   WHERE f.oid IN ('public.get_user_chat_history(text)'::regprocedure,
                   'public.get_user_stats(text)'::regprocedure,
                   'public.is_user_message(jsonb)'::regprocedure,
                   'public.update_user_timestamp()'::regprocedure,
                   'public.update_chat_sessions_timestamp()'::regprocedure,
                   'public.update_user_stats_on_session()'::regprocedure,
                   'public.assign_chat_message_seq()'::regprocedure,
                   'public.update_user_message_count()'::regprocedure,
                   'public.update_user_search_count()'::regprocedure)
     AND f.grantee_name IN ('PUBLIC', 'anon', 'authenticated', 'service_role')
     AND (f.is_grantable OR NOT (
           (f.grantee_name = 'authenticated'
            AND f.proname IN ('get_user_chat_history', 'get_user_stats', 'is_user_message'))
        OR (f.grantee_name = 'service_role'
            AND f.proname IN ('get_user_chat_history', 'get_user_stats'))));
  IF leftover IS NOT NULL THEN
    RAISE EXCEPTION 'privileges the migration could not revoke are still granted: %', leftover
      USING HINT = 'Run the migrations as the owner of the functions, or revoke these grants as '
                   'the role that made them (docs/schema.md, "Running on Supabase").';
  END IF;
END
$$;

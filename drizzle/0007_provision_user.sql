-- Custom migration: the handshake's provisioning as one statement that cannot recreate a
-- deleted user's row (issue #11, item 4; table user_tombstones in 0006).
--
-- provision_users(p_clerk_ids): creates the rows of users seen for the first time, otherwise
-- records that they were seen; returns each user's row id and subscription tier (which picks
-- their rate limits). A deleted user (a tombstone) is left out of the result. The handshakes a
-- node takes at the same moment share one call (UserService batches them). It holds
-- the per-user advisory lock that every deletion takes exclusively
-- (pg_advisory_xact_lock(1970496882, hashtext(clerk_id)); 1970496882 = 0x75736572, "user",
-- the same class as server/src/repositories/user.repository.ts), and its INSERT runs after the
-- lock is granted, so under READ COMMITTED (a VOLATILE function's statements each take a new
-- snapshot) it sees every deletion that committed before it and no deletion can commit while
-- it runs. A plain INSERT … WHERE NOT EXISTS (tombstone) would let a deletion that commits
-- while it runs miss the new row. One function call, so the handshake pays one round trip and
-- the lock is released when the statement's transaction ends.
-- SECURITY INVOKER, and no API role may call it: only the server (the owner) provisions users.
CREATE OR REPLACE FUNCTION public.provision_users(p_clerk_ids text[])
RETURNS TABLE (clerk_id text, user_id uuid, tier text)
LANGUAGE plpgsql
VOLATILE
SECURITY INVOKER
SET search_path = public, pg_temp
AS $$
#variable_conflict use_column
BEGIN
  -- Every user's lock first, in one order (sorted), so two nodes never deadlock.
  PERFORM pg_advisory_xact_lock_shared(1970496882, hashtext(s.c))
     FROM (SELECT DISTINCT unnest(p_clerk_ids) AS c ORDER BY 1) s;
  RETURN QUERY
  INSERT INTO public.users AS u (clerk_id)
  SELECT s.c FROM (SELECT DISTINCT unnest(p_clerk_ids) AS c) s
   WHERE NOT EXISTS (SELECT 1 FROM public.user_tombstones t WHERE t.clerk_id = s.c)
   ORDER BY s.c
  ON CONFLICT ON CONSTRAINT users_clerk_id_key DO UPDATE SET last_seen_at = now()
  RETURNING u.clerk_id, u.id, u.subscription_tier;
END
$$;
--> statement-breakpoint
COMMENT ON FUNCTION public.provision_users(text[]) IS 'The handshake''s upsert of a user''s row, refused (NULL) for a deleted user (user_tombstones); server-only.';
--> statement-breakpoint
-- Functions are executable by PUBLIC by default, and Supabase's default privileges grant new
-- functions to anon, authenticated and service_role: take it all back.
REVOKE ALL ON FUNCTION public.provision_users(text[]) FROM PUBLIC;
--> statement-breakpoint
DO $$
DECLARE
  r text;
BEGIN
  FOREACH r IN ARRAY ARRAY['anon', 'authenticated', 'service_role'] LOOP
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
      EXECUTE format('REVOKE ALL ON FUNCTION public.provision_users(text[]) FROM %I', r);
    END IF;
  END LOOP;
END
$$;

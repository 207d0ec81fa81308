-- Custom migration: the handshake's provisioning as one statement that cannot recreate a
-- deleted user's row (issue #11, item 4; table user_tombstones in 0006).
--
-- provision_user(p_clerk_id): creates the user's row on first sight, otherwise records that
-- they were seen; returns the row id and subscription tier (which picks the user's rate
-- limits), or NULLs when the user was deleted (a tombstone). It holds
-- the per-user advisory lock that every deletion takes exclusively
-- (pg_advisory_xact_lock(1970496882, hashtext(clerk_id)); 1970496882 = 0x75736572, "user",
-- the same class as server/src/repositories/user.repository.ts), and its INSERT runs after the
-- lock is granted, so under READ COMMITTED (a VOLATILE function's statements each take a new
-- snapshot) it sees every deletion that committed before it and no deletion can commit while
-- it runs. A plain INSERT … WHERE NOT EXISTS (tombstone) would let a deletion that commits
-- while it runs miss the new row. One function call, so the handshake pays one round trip and
-- the lock is released when the statement's transaction ends.
-- SECURITY INVOKER, and no API role may call it: only the server (the owner) provisions users.
CREATE OR REPLACE FUNCTION public.provision_user(
  p_clerk_id text,
  OUT user_id uuid,
  OUT tier text
)
LANGUAGE plpgsql
VOLATILE
SECURITY INVOKER
SET search_path = public, pg_temp
AS $$
BEGIN
  PERFORM pg_advisory_xact_lock_shared(1970496882, hashtext(p_clerk_id));
  INSERT INTO public.users AS u (clerk_id)
  SELECT p_clerk_id
   WHERE NOT EXISTS (SELECT 1 FROM public.user_tombstones t WHERE t.clerk_id = p_clerk_id)
  ON CONFLICT (clerk_id) DO UPDATE SET last_seen_at = now()
  RETURNING u.id, u.subscription_tier INTO user_id, tier;
END
$$;
--> statement-breakpoint
COMMENT ON FUNCTION public.provision_user(text) IS 'The handshake''s upsert of a user''s row, refused (NULL) for a deleted user (user_tombstones); server-only.';
--> statement-breakpoint
-- Functions are executable by PUBLIC by default, and Supabase's default privileges grant new
-- functions to anon, authenticated and service_role: take it all back.
REVOKE ALL ON FUNCTION public.provision_user(text) FROM PUBLIC;
--> statement-breakpoint
DO $$
DECLARE
  r text;
BEGIN
  FOREACH r IN ARRAY ARRAY['anon', 'authenticated', 'service_role'] LOOP
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
      EXECUTE format('REVOKE ALL ON FUNCTION public.provision_user(text) FROM %I', r);
    END IF;
  END LOOP;
END
$$;

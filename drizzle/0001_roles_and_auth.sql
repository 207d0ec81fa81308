-- Custom migration: the roles and the auth helpers that RLS needs, made to work on plain
-- Postgres the way Supabase provides them (DESIGN.md, "RLS works on plain Postgres").
-- On Supabase every object here already exists, and each statement leaves it alone.

-- The two API roles. Roles are cluster-wide, so several databases migrated at once (the test
-- suite does this) may race to create them: a duplicate is not an error.
DO $$
BEGIN
  CREATE ROLE authenticated NOLOGIN NOINHERIT;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;
--> statement-breakpoint
DO $$
BEGIN
  CREATE ROLE service_role NOLOGIN NOINHERIT;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;
--> statement-breakpoint
CREATE SCHEMA IF NOT EXISTS auth;
--> statement-breakpoint
-- auth.jwt(): the caller's claims, read from the setting `request.jwt.claims` (JSON text).
-- Created only when missing, so Supabase's own definition is never replaced.
DO $$
BEGIN
  IF to_regprocedure('auth.jwt()') IS NULL THEN
    EXECUTE $fn$
      CREATE FUNCTION auth.jwt() RETURNS jsonb
      LANGUAGE sql STABLE
      AS $body$
        SELECT coalesce(
          nullif(current_setting('request.jwt.claim', true), ''),
          nullif(current_setting('request.jwt.claims', true), '')
        )::jsonb
      $body$
    $fn$;
    COMMENT ON FUNCTION auth.jwt() IS 'The caller''s JWT claims from request.jwt.claims (Supabase-compatible).';
  END IF;
END
$$;
--> statement-breakpoint
-- auth.role(): the `role` claim ('authenticated' or 'service_role').
DO $$
BEGIN
  IF to_regprocedure('auth.role()') IS NULL THEN
    EXECUTE $fn$
      CREATE FUNCTION auth.role() RETURNS text
      LANGUAGE sql STABLE
      AS $body$
        SELECT coalesce(
          nullif(current_setting('request.jwt.claim.role', true), ''),
          nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role'
        )::text
      $body$
    $fn$;
    COMMENT ON FUNCTION auth.role() IS 'The role claim from request.jwt.claims (Supabase-compatible).';
  END IF;
END
$$;
--> statement-breakpoint
GRANT USAGE ON SCHEMA auth TO authenticated, service_role;
--> statement-breakpoint
GRANT EXECUTE ON FUNCTION auth.jwt(), auth.role() TO authenticated, service_role;
--> statement-breakpoint
GRANT USAGE ON SCHEMA public TO authenticated, service_role;

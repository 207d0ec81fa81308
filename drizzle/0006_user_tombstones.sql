CREATE TABLE "user_tombstones" (
	"clerk_id" text PRIMARY KEY NOT NULL,
	"deleted_at" timestamp with time zone DEFAULT now() NOT NULL,
	"event_at" timestamp with time zone DEFAULT now() NOT NULL,
	"user_id" uuid
);
--> statement-breakpoint
ALTER TABLE "users" ADD COLUMN "profile_event_at" timestamp with time zone;
--> statement-breakpoint
-- user_tombstones is the server's own bookkeeping (it connects as the table owner): no API role
-- needs it, and a client that could write it could delete or resurrect users. Supabase's
-- default privileges grant every new table in `public` to anon, authenticated and service_role,
-- so take them all back, and from PUBLIC.
REVOKE ALL ON public.user_tombstones FROM PUBLIC;
--> statement-breakpoint
DO $$
DECLARE
  r text;
BEGIN
  FOREACH r IN ARRAY ARRAY['anon', 'authenticated', 'service_role'] LOOP
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
      EXECUTE format('REVOKE ALL ON public.user_tombstones FROM %I', r);
    END IF;
  END LOOP;
END
$$;
--> statement-breakpoint
-- No policies: with row-level security on and no grants, every role but the owner is refused
-- even if a grant is added by mistake later.
ALTER TABLE public.user_tombstones ENABLE ROW LEVEL SECURITY;
--> statement-breakpoint
COMMENT ON TABLE public.user_tombstones IS 'Users Clerk deleted: their users row must not be created again until a newer user.created (server-only).';
--> statement-breakpoint
COMMENT ON COLUMN public.users.profile_event_at IS 'Clerk timestamp of the last user.created/user.updated applied; older webhook events change nothing.';

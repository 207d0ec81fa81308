-- Custom migration: grants and row-level security. Tables exist before any policy is made
-- (defect 5). A user is identified by the Clerk id in the `sub` claim, compared as text
-- (defect 6: auth.uid() casts to uuid and fails on `user_2abc…`). `(SELECT …)` around the
-- claim lets Postgres evaluate it once per statement instead of once per row.
--
-- Who may do what:
--   authenticated: read their own user row and change its profile fields only (defect 8);
--                  read, create, rename and delete their own chats (defect 9: delete);
--                  read and add messages in their own chats; read and record their own searches.
--   service_role:  everything, through permissive policies (defect 7: the seed's restrictive
--                  policy was ANDed into every query and locked users out of their own row).
-- Counters, last_message, last_seq and seq are written only by the SECURITY DEFINER triggers.

GRANT SELECT, INSERT, UPDATE, DELETE ON public.users, public.chat_sessions, public.chat_memory,
  public.search_sessions TO service_role;
--> statement-breakpoint
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
ALTER TABLE public.users ENABLE ROW LEVEL SECURITY;
--> statement-breakpoint
ALTER TABLE public.chat_sessions ENABLE ROW LEVEL SECURITY;
--> statement-breakpoint
ALTER TABLE public.chat_memory ENABLE ROW LEVEL SECURITY;
--> statement-breakpoint
ALTER TABLE public.search_sessions ENABLE ROW LEVEL SECURITY;
--> statement-breakpoint

-- users
CREATE POLICY "Service role can manage users" ON public.users
  AS PERMISSIVE FOR ALL TO service_role USING (true) WITH CHECK (true);
--> statement-breakpoint
CREATE POLICY "Users can view their own data" ON public.users
  FOR SELECT TO authenticated
  USING (clerk_id = (SELECT auth.jwt() ->> 'sub'));
--> statement-breakpoint
-- Column grants above limit which fields; WITH CHECK stops a row being handed to another id.
CREATE POLICY "Users can update their own data" ON public.users
  FOR UPDATE TO authenticated
  USING (clerk_id = (SELECT auth.jwt() ->> 'sub'))
  WITH CHECK (clerk_id = (SELECT auth.jwt() ->> 'sub'));
--> statement-breakpoint

-- chat_sessions
CREATE POLICY "Service role can manage chat sessions" ON public.chat_sessions
  AS PERMISSIVE FOR ALL TO service_role USING (true) WITH CHECK (true);
--> statement-breakpoint
CREATE POLICY "Users can view their own chat sessions" ON public.chat_sessions
  FOR SELECT TO authenticated
  USING (user_id IN (SELECT id FROM public.users WHERE clerk_id = (SELECT auth.jwt() ->> 'sub')));
--> statement-breakpoint
CREATE POLICY "Users can insert their own chat sessions" ON public.chat_sessions
  FOR INSERT TO authenticated
  WITH CHECK (user_id IN (SELECT id FROM public.users WHERE clerk_id = (SELECT auth.jwt() ->> 'sub')));
--> statement-breakpoint
CREATE POLICY "Users can update their own chat sessions" ON public.chat_sessions
  FOR UPDATE TO authenticated
  USING (user_id IN (SELECT id FROM public.users WHERE clerk_id = (SELECT auth.jwt() ->> 'sub')))
  WITH CHECK (user_id IN (SELECT id FROM public.users WHERE clerk_id = (SELECT auth.jwt() ->> 'sub')));
--> statement-breakpoint
CREATE POLICY "Users can delete their own chat sessions" ON public.chat_sessions
  FOR DELETE TO authenticated
  USING (user_id IN (SELECT id FROM public.users WHERE clerk_id = (SELECT auth.jwt() ->> 'sub')));
--> statement-breakpoint

-- chat_memory
CREATE POLICY "Service role can manage chat memory" ON public.chat_memory
  AS PERMISSIVE FOR ALL TO service_role USING (true) WITH CHECK (true);
--> statement-breakpoint
CREATE POLICY "Users can view their own chat messages" ON public.chat_memory
  FOR SELECT TO authenticated
  USING (session_id IN (
    SELECT cs.id FROM public.chat_sessions cs
      JOIN public.users u ON u.id = cs.user_id
     WHERE u.clerk_id = (SELECT auth.jwt() ->> 'sub')));
--> statement-breakpoint
CREATE POLICY "Users can insert messages to their own sessions" ON public.chat_memory
  FOR INSERT TO authenticated
  WITH CHECK (session_id IN (
    SELECT cs.id FROM public.chat_sessions cs
      JOIN public.users u ON u.id = cs.user_id
     WHERE u.clerk_id = (SELECT auth.jwt() ->> 'sub')));
--> statement-breakpoint

-- search_sessions
CREATE POLICY "Service role can manage search sessions" ON public.search_sessions
  AS PERMISSIVE FOR ALL TO service_role USING (true) WITH CHECK (true);
--> statement-breakpoint
CREATE POLICY "Users can view their own search sessions" ON public.search_sessions
  FOR SELECT TO authenticated
  USING (user_id IN (SELECT id FROM public.users WHERE clerk_id = (SELECT auth.jwt() ->> 'sub')));
--> statement-breakpoint
CREATE POLICY "Users can insert their own search sessions" ON public.search_sessions
  FOR INSERT TO authenticated
  WITH CHECK (user_id IN (SELECT id FROM public.users WHERE clerk_id = (SELECT auth.jwt() ->> 'sub')));

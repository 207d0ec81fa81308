CREATE TABLE "app_event_nodes" (
	"pool_id" text PRIMARY KEY NOT NULL,
	"heartbeat_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "app_event_settings" (
	"id" boolean PRIMARY KEY DEFAULT true NOT NULL,
	"enabled" boolean DEFAULT false NOT NULL,
	CONSTRAINT "app_event_settings_single_row" CHECK ("app_event_settings"."id")
);
--> statement-breakpoint
CREATE TABLE "app_events" (
	"id" bigint PRIMARY KEY GENERATED ALWAYS AS IDENTITY (sequence name "app_events_id_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 CACHE 1),
	"event_id" uuid DEFAULT gen_random_uuid() NOT NULL,
	"chat_id" uuid NOT NULL,
	"type" text NOT NULL,
	"data" jsonb NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"attempts" integer DEFAULT 0 NOT NULL,
	"next_attempt_at" timestamp with time zone DEFAULT now() NOT NULL,
	"last_attempt_at" timestamp with time zone,
	"last_error" text,
	"requeued_at" timestamp with time zone,
	"failed_at" timestamp with time zone,
	CONSTRAINT "app_events_event_id_key" UNIQUE("event_id")
);
--> statement-breakpoint
CREATE INDEX "app_events_chat_id_idx" ON "app_events" USING btree ("chat_id","id");--> statement-breakpoint
CREATE INDEX "app_events_pending_idx" ON "app_events" USING btree ("next_attempt_at") WHERE "app_events"."failed_at" is null;--> statement-breakpoint
CREATE INDEX "app_events_failed_idx" ON "app_events" USING btree ("id") WHERE "app_events"."failed_at" is not null;
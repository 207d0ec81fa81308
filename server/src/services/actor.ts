/** Who is acting: a user as identified by Clerk and by their `users` row. */
export interface Actor {
  /** Clerk user id. */
  userId: string;
  /** Primary key of the `users` row. */
  dbUserId: string;
  /**
   * `users.subscription_tier` as read when the socket connected (a socket's actor only): picks
   * the per-user write limits. Absent or unknown: the free tier.
   */
  subscriptionTier?: string | null | undefined;
}

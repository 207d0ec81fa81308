/** Who is acting: a user as identified by Clerk and by their `users` row. */
export interface Actor {
  /** Clerk user id. */
  userId: string;
  /** Primary key of the `users` row. */
  dbUserId: string;
}

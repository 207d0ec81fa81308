/**
 * The Postgres the benches create their databases on: `--database-url`, else
 * TEST_DATABASE_URL, else the local one. Loopback only (127.0.0.0/8, localhost or [::1]): a
 * bench must never load another machine. Exits with 2 otherwise.
 */
export function loopbackDatabaseUrl(flag: string | undefined): string {
  const url =
    flag ?? process.env.TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
  if (!/^postgres(ql)?:\/\/[^@]*@?(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?\//.test(url)) {
    console.error("the database must be on loopback (127.0.0.0/8, localhost or [::1])");
    process.exit(2);
  }
  return url;
}

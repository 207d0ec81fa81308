/**
 * Postgres keeps timestamps to the microsecond, JavaScript dates to the millisecond. Where an
 * order must be reproduced exactly (the sidebar), timestamps travel as ISO 8601 strings with
 * six fractional digits, which sort correctly as strings.
 */
export function isoFromMicros(micros: string): string {
  const us = BigInt(micros);
  const ms = us / 1000n;
  const base = new Date(Number(ms)).toISOString(); // 2026-11-25T05:00:00.123Z
  const fraction = (us % 1_000_000n).toString().padStart(6, "0");
  return `${base.slice(0, 19)}.${fraction}Z`;
}

/** Small statistics helpers for the load-test harness. */

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i] as number;
}

export interface LatencySummary {
  count: number;
  p50: number;
  p95: number;
  p99: number;
  max: number;
}

export function summarize(values: number[]): LatencySummary {
  const sorted = [...values].sort((a, b) => a - b);
  return {
    count: sorted.length,
    p50: round(percentile(sorted, 50)),
    p95: round(percentile(sorted, 95)),
    p99: round(percentile(sorted, 99)),
    max: round(sorted.at(-1) ?? Number.NaN),
  };
}

export function round(x: number, digits = 2): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

/** "product / baseline" as a ratio string, or "n/a". */
export function ratio(product: number, baseline: number): string {
  if (!Number.isFinite(product) || !Number.isFinite(baseline) || baseline === 0) return "n/a";
  return `${round(product / baseline, 2)}×`;
}

/** Absolute wall-clock milliseconds with sub-millisecond precision, comparable across threads. */
export function nowMs(): number {
  return performance.timeOrigin + performance.now();
}

/** The median (the mean of the middle two for an even count), NaN values left out; NaN if none. */
export function median(xs: number[]): number {
  const s = xs.filter(Number.isFinite).sort((a, b) => a - b);
  if (s.length === 0) return Number.NaN;
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

/**
 * A quantile of the observations between two samples of a Prometheus histogram (cumulative
 * bucket counts by upper bound), interpolated linearly inside its bucket as Prometheus'
 * histogram_quantile does; in ms. NaN without observations.
 */
export function histogramQuantile(
  before: Map<number, number>,
  after: Map<number, number>,
  q: number,
): number {
  const bounds = [...after.keys()].sort((a, b) => a - b);
  const counts = bounds.map((b) => (after.get(b) ?? 0) - (before.get(b) ?? 0));
  const total = counts.at(-1) ?? 0;
  if (!(total > 0)) return Number.NaN;
  const rank = q * total;
  let lower = 0;
  let below = 0;
  for (let i = 0; i < bounds.length; i++) {
    const upper = bounds[i] as number;
    const c = counts[i] as number;
    if (c >= rank) {
      if (!Number.isFinite(upper)) return round(lower * 1000); // in the +Inf bucket
      return round((lower + ((upper - lower) * (rank - below)) / Math.max(1, c - below)) * 1000);
    }
    lower = upper;
    below = c;
  }
  return Number.NaN;
}

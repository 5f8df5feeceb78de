/** Sample storage and summaries for the timed loops. */

/** A growable array of doubles: no per-sample allocation in the hot loop. */
export class Samples {
  #data = new Float64Array(1024);
  length = 0;

  push(value: number): void {
    if (this.length === this.#data.length) {
      const bigger = new Float64Array(this.#data.length * 2);
      bigger.set(this.#data);
      this.#data = bigger;
    }
    this.#data[this.length++] = value;
  }

  clear(): void {
    this.length = 0;
  }

  sum(): number {
    let s = 0;
    for (let i = 0; i < this.length; i++) s += this.#data[i];
    return s;
  }

  max(): number {
    let m = 0;
    for (let i = 0; i < this.length; i++) if (this.#data[i] > m) m = this.#data[i];
    return m;
  }

  avg(): number {
    return this.length === 0 ? 0 : this.sum() / this.length;
  }

  /** Sorted copy. */
  sorted(): Float64Array {
    return this.#data.slice(0, this.length).sort();
  }

  append(other: Samples): void {
    for (let i = 0; i < other.length; i++) this.push(other.#data[i]);
  }
}

/** Nearest-rank percentile of a sorted array (p in 0..100); 0 when empty. */
export function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return 0;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))];
}

export interface LatencySummary {
  avg: number;
  p50: number;
  p99: number;
  p999: number;
}

export function summarize(samples: Samples): LatencySummary {
  const sorted = samples.sorted();
  return {
    avg: samples.avg(),
    p50: percentile(sorted, 50),
    p99: percentile(sorted, 99),
    p999: percentile(sorted, 99.9),
  };
}

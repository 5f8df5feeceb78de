// Figures of the fault programs: each case appends one JSON line per round to
// .faults-report.jsonl (git-ignored) and prints a summary line, so the README's figures come
// from the programs themselves.
import { appendFileSync } from 'node:fs'

/** Rounds per case: npm run test:faults sets 100; the suite's short version runs 2. */
export const FAULT_ROUNDS = Number(process.env.KVXFER_FAULT_ROUNDS ?? 2)
/** The bound every promise of a dead peer must settle within, with no timeoutMs set. */
export const FAULT_SETTLE_MS = 5_000

const REPORT = process.env.KVXFER_FAULT_REPORT ?? '.faults-report.jsonl'

export function recordFigure(figure: Record<string, unknown>): void {
  appendFileSync(REPORT, `${JSON.stringify(figure)}\n`)
}

/** One line: rounds, median, p99 and max of `values` (ms). */
export function summarize(what: string, values: number[]): void {
  if (values.length === 0) return
  const sorted = [...values].sort((a, b) => a - b)
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!
  const ms = (v: number) => `${v.toFixed(1)} ms`
  console.info(`${what}: ${values.length} rounds, settle median ${ms(at(0.5))}, p99 ${ms(at(0.99))}, max ${ms(sorted.at(-1)!)}`)
}

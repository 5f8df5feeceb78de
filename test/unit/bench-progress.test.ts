// The bench's progress on stderr: on a terminal the bar only moves forward and shows an ETA;
// elsewhere one plain line per step; --no-progress prints nothing. A fake stream and clock.
import { describe, expect, it } from 'vitest'
import { ProgressBar } from '../../dist/bench/progress.js'

function fakeStream(isTTY: boolean) {
  const writes: string[] = []
  const stream = { isTTY, columns: 200, write: (s: string) => writes.push(s) > 0 } as unknown as NodeJS.WriteStream
  return { stream, writes }
}

/** The '#' count of each bar drawn. */
const filled = (writes: string[]) => writes.filter((w) => w.startsWith('\r\x1b[2K[')).map((w) => /\[(#*)\.*\]/.exec(w)![1].length)

describe('ProgressBar', () => {
  it('on a terminal: never moves back, even when a step reports less than before, and shows an ETA', () => {
    let now = 1_000_000
    const { stream, writes } = fakeStream(true)
    const bar = new ProgressBar(4, true, stream, () => now)
    expect(bar.enabled).toBe(true)
    expect(bar.lines).toBe(false)
    bar.step('a')
    bar.current.fraction = 0.8
    now += 2_000
    bar.log('first line')
    bar.current.fraction = 0.1 // a phase that restarts its own fraction
    bar.log('second line')
    bar.step('b')
    bar.current.fraction = 1
    now += 2_000
    bar.log('third line')
    bar.done()
    const bars = filled(writes)
    expect(bars.length).toBeGreaterThanOrEqual(4)
    for (let i = 1; i < bars.length; i++) expect(bars[i], `bar ${i} after ${bars[i - 1]}`).toBeGreaterThanOrEqual(bars[i - 1])
    expect(bars.at(-1)).toBe(15) // 2 of 4 steps done
    // 4 s for half the run: 4 s to go.
    expect(writes.filter((w) => w.startsWith('\r\x1b[2K[')).at(-1)).toMatch(/ 2\/4 4s ETA 4s b$/)
    expect(writes).toContain('first line\n')
    expect(writes.at(-1)).toBe('\r\x1b[2K')
  })

  it('elsewhere: one line per step with the elapsed time and, once there is a pace, the ETA', () => {
    let now = 0
    const { stream, writes } = fakeStream(false)
    const bar = new ProgressBar(3, true, stream, () => now)
    expect(bar.enabled).toBe(false)
    expect(bar.lines).toBe(true)
    bar.step('kvxfer 4K x1')
    bar.current.fraction = 1
    now = 10_000
    bar.step('memcpy 4K')
    bar.current.fraction = 0.5
    now = 125_000
    bar.step('net 4K')
    bar.log('a line')
    bar.done()
    expect(writes).toEqual([
      'kvxfer bench: [1/3] kvxfer 4K x1 (0s)\n',
      'kvxfer bench: [2/3] memcpy 4K (10s, ETA 20s)\n',
      'kvxfer bench: [3/3] net 4K (125s, ETA 1m03s)\n',
      'a line\n',
    ])
  })

  it('--no-progress: nothing but the lines logged', () => {
    for (const tty of [true, false]) {
      const { stream, writes } = fakeStream(tty)
      const bar = new ProgressBar(2, false, stream)
      bar.step('x')
      bar.log('only this')
      bar.done()
      expect(writes).toEqual(['only this\n'])
    }
  })
})

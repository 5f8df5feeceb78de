// kvxfer/prometheus against a real scrape: agents in this process move real bytes (checked),
// a node:http server serves the registry as a Prometheus server would scrape it, fetch() reads
// it over a socket, and the text exposition is parsed line by line. Every figure is compared
// with what the test did: transfer counts and bytes by op and peer, a refused transfer to a
// forgotten peer, the histogram against the durations the posts resolved with, notifications,
// regions, the peer cap folding into `other`, unregistering, and an agent that closed.
import * as http from 'node:http'
import type { AddressInfo } from 'node:net'
import { Registry } from 'prom-client'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { KvxferError, type Agent, type Region } from '../../dist/index.js'
import { DEFAULT_DURATION_BUCKETS, collectMetrics } from '../../dist/prometheus.js'
import { closeAll, createAgent, exchangeMetadata, fillBytes, KiB, sha256, throwsWith } from '../fixtures/index.js'

interface Sample { name: string; labels: Record<string, string>; value: number }
interface Exposition { help: Map<string, string>; type: Map<string, string>; samples: Sample[] }

/** Prometheus' text format, version 0.0.4: HELP and TYPE comments, then `name{labels} value` lines. */
function parseExposition(text: string): Exposition {
  const out: Exposition = { help: new Map(), type: new Map(), samples: [] }
  for (const line of text.split('\n')) {
    if (line === '') continue
    const comment = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/.exec(line)
    if (comment !== null) {
      out[comment[1] === 'HELP' ? 'help' : 'type'].set(comment[2], comment[3])
      continue
    }
    const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line)
    if (sample === null) throw new Error(`not an exposition line: ${JSON.stringify(line)}`)
    const labels: Record<string, string> = {}
    const body = sample[2] ?? ''
    const pair = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)/y
    for (let at = 0; at < body.length; at = pair.lastIndex) {
      pair.lastIndex = at
      const m = pair.exec(body)
      if (m === null) throw new Error(`bad labels in ${JSON.stringify(line)}`)
      labels[m[1]] = m[2].replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c))
    }
    const value = sample[3] === '+Inf' ? Infinity : sample[3] === '-Inf' ? -Infinity : Number(sample[3])
    if (Number.isNaN(value) && sample[3] !== 'NaN') throw new Error(`bad value in ${JSON.stringify(line)}`)
    out.samples.push({ name: sample[1], labels, value })
  }
  return out
}

/** The one sample of `name` whose labels include `labels`; fails on none or several. */
function valueOf(e: Exposition, name: string, labels: Record<string, string>): number {
  const found = e.samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
  expect(found, `${name} ${JSON.stringify(labels)} in the scrape`).toHaveLength(1)
  return found[0].value
}

let server: http.Server
let url: string
let registry: Registry

async function scrape(): Promise<Exposition> {
  const response = await fetch(url)
  expect(response.status).toBe(200)
  expect(response.headers.get('content-type')).toBe(registry.contentType)
  return parseExposition(await response.text())
}

beforeAll(async () => {
  server = http.createServer((req, res) => {
    registry.metrics().then(
      (text) => {
        res.setHeader('Content-Type', registry.contentType)
        res.end(text)
      },
      (error: Error) => {
        res.statusCode = 500
        res.end(error.stack)
      },
    )
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/metrics`
})

afterAll(async () => {
  await new Promise((resolve) => server.close(resolve))
})

describe('collectMetrics', { timeout: 60_000 }, () => {
  let a: Agent
  let b: Agent
  let c: Agent
  let src: Region
  let dst: Region
  let dstC: Region

  beforeAll(async () => {
    registry = new Registry()
    a = await createAgent('prom-a')
    b = await createAgent('prom-b')
    c = await createAgent('prom-c')
    src = await a.allocate(256 * KiB)
    dst = await b.allocate(256 * KiB)
    dstC = await c.allocate(256 * KiB)
    await exchangeMetadata(a, b)
    await exchangeMetadata(a, c)
  })

  afterAll(async () => {
    await closeAll(a, b, c)
  })

  it('reports transfers, bytes, failures, durations, notifications and regions as they happened', async () => {
    const metrics = [collectMetrics(a, { registry, maxPeers: 1 }), collectMetrics(b, { registry })]
    const writeNs: number[] = []
    const readNs: number[] = []
    // 5 writes of 64 KiB into b (the last with a notification), bytes checked at b.
    for (let i = 0; i < 5; i++) {
      fillBytes(src.view(0, 64 * KiB), 100 + i)
      const notify = i === 4 ? 'done' : undefined
      const r = await a.write(src.slice(0, 64 * KiB), dst.slice(i * 4 * KiB, 64 * KiB), b.name, { notify, timeoutMs: 10_000 })
      expect(r.bytes).toBe(64 * KiB)
      expect(sha256(dst.view(i * 4 * KiB, 64 * KiB))).toBe(sha256(src.view(0, 64 * KiB)))
      writeNs.push(r.durationNs)
    }
    await b.waitForNotification(a.name, 'done', { timeoutMs: 10_000 })
    // 3 reads of 4 KiB from b, prepared once.
    const read = a.prepare({ op: 'read', local: src.slice(128 * KiB, 4 * KiB), remote: dst.slice(0, 4 * KiB), peer: b.name })
    for (let i = 0; i < 3; i++) readNs.push((await read.post({ timeoutMs: 10_000 })).durationNs)
    read.release()
    expect(sha256(src.view(128 * KiB, 4 * KiB))).toBe(sha256(dst.view(0, 4 * KiB)))
    // 2 writes of 8 KiB into c: past maxPeers 1, so counted under peer="other".
    for (let i = 0; i < 2; i++) writeNs.push((await a.write(src.slice(0, 8 * KiB), dstC.slice(0, 8 * KiB), c.name)).durationNs)
    // A write to a peer that left is refused: a failure of op write with that peer.
    await a.forgetPeer(b.name, { reason: 'drained' })
    await expect(a.write(src.slice(0, 4 * KiB), dst.slice(0, 4 * KiB), b.name)).rejects.toBeInstanceOf(KvxferError)

    const e = await scrape()
    const stats = a.stats()
    const A = { agent: a.name }
    expect(valueOf(e, 'kvxfer_transfers_total', { ...A, op: 'write', peer: b.name })).toBe(5)
    expect(valueOf(e, 'kvxfer_transfers_total', { ...A, op: 'read', peer: b.name })).toBe(3)
    expect(valueOf(e, 'kvxfer_transfers_total', { ...A, op: 'write', peer: 'other' })).toBe(2)
    expect(valueOf(e, 'kvxfer_transfers_total', { ...A, op: 'read', peer: 'other' })).toBe(0)
    expect(valueOf(e, 'kvxfer_transfer_bytes_total', { ...A, op: 'write', peer: b.name })).toBe(5 * 64 * KiB)
    expect(valueOf(e, 'kvxfer_transfer_bytes_total', { ...A, op: 'read', peer: b.name })).toBe(3 * 4 * KiB)
    expect(valueOf(e, 'kvxfer_transfer_bytes_total', { ...A, op: 'write', peer: 'other' })).toBe(2 * 8 * KiB)
    expect(valueOf(e, 'kvxfer_transfer_failures_total', { ...A, op: 'write', peer: b.name })).toBe(1)
    expect(valueOf(e, 'kvxfer_transfer_failures_total', { ...A, op: 'read', peer: b.name })).toBe(0)
    // No peer c by name: the cap held.
    expect(e.samples.filter((s) => s.labels.peer === c.name)).toEqual([])
    // The counters are agent.stats() by op and peer.
    const sum = (name: string) => e.samples.filter((s) => s.name === name && s.labels.agent === a.name).reduce((t, s) => t + s.value, 0)
    expect(sum('kvxfer_transfers_total')).toBe(stats.transfers)
    expect(sum('kvxfer_transfer_failures_total')).toBe(stats.failures)
    expect(sum('kvxfer_transfer_bytes_total')).toBe(stats.bytesWritten + stats.bytesRead)

    // The histogram holds exactly the durations the posts resolved with.
    const H = 'kvxfer_transfer_duration_seconds'
    for (const [op, ns] of [['write', writeNs], ['read', readNs]] as const) {
      expect(valueOf(e, `${H}_count`, { ...A, op })).toBe(ns.length)
      expect(valueOf(e, `${H}_sum`, { ...A, op })).toBeCloseTo(ns.reduce((t, x) => t + x, 0) / 1e9, 9)
      const buckets = e.samples.filter((s) => s.name === `${H}_bucket` && s.labels.agent === a.name && s.labels.op === op)
      expect(buckets.map((s) => s.labels.le)).toEqual([...DEFAULT_DURATION_BUCKETS.map(String), '+Inf'])
      for (const s of buckets) {
        const le = s.labels.le === '+Inf' ? Infinity : Number(s.labels.le)
        expect(s.value, `bucket le=${s.labels.le}`).toBe(ns.filter((x) => x / 1e9 <= le).length)
      }
    }
    // b moved nothing itself: its histogram is there, at zero.
    expect(valueOf(e, `${H}_count`, { agent: b.name, op: 'write' })).toBe(0)

    expect(valueOf(e, 'kvxfer_notifications_sent_total', A)).toBe(1)
    expect(valueOf(e, 'kvxfer_notifications_received_total', { agent: b.name })).toBe(1)
    expect(valueOf(e, 'kvxfer_transfers_in_flight', A)).toBe(0)
    expect(valueOf(e, 'kvxfer_regions', A)).toBe(1)
    expect(valueOf(e, 'kvxfer_peer_failed', { ...A, peer: b.name })).toBe(0)
    const polls = valueOf(e, 'kvxfer_busy_polls_total', A)
    expect(valueOf(e, 'kvxfer_busy_poll_hits_total', A)).toBeLessThanOrEqual(polls)
    expect(polls).toBeLessThanOrEqual(a.stats().busyPoll.polls)
    expect(valueOf(e, 'kvxfer_busy_poll_seconds_total', A)).toBeGreaterThanOrEqual(0)
    expect(valueOf(e, 'kvxfer_busy_poll_contended_total', A)).toBeLessThanOrEqual(a.stats().busyPoll.contended)
    // The UCX engine has no NIXL telemetry to report.
    if (a.engine === 'ucx') expect([...e.type.keys()].filter((n) => n.includes('nixl'))).toEqual([])

    // Every sample belongs to a metric with HELP and TYPE.
    for (const s of e.samples) {
      const family = e.type.has(s.name) ? s.name : s.name.replace(/_(bucket|sum|count)$/, '')
      expect(e.type.get(family), s.name).toMatch(/^(counter|gauge|histogram)$/)
      expect(e.help.get(family), s.name).toBeTruthy()
    }
    expect(e.type.get('kvxfer_transfers_total')).toBe('counter')
    expect(e.type.get(H)).toBe('histogram')
    expect(e.type.get('kvxfer_transfers_in_flight')).toBe('gauge')

    // The same agent twice under one prefix is refused; unregistering takes the metrics away.
    throwsWith(() => collectMetrics(a, { registry }), 'ERR_INVALID_ARG')
    metrics[0].unregister()
    metrics[0].unregister()
    const onlyB = await scrape()
    expect(onlyB.samples.filter((s) => s.labels.agent === a.name)).toEqual([])
    expect(valueOf(onlyB, 'kvxfer_regions', { agent: b.name })).toBe(1)
    metrics[1].unregister()
    expect((await scrape()).samples).toEqual([])
    expect(await registry.metrics()).not.toMatch(/kvxfer_/)
  })

  it('drops an agent that closed at the next scrape, and takes a prefix and an OpenMetrics registry', async () => {
    registry = new Registry()
    const d = await createAgent('prom-d')
    const withPrefix = collectMetrics(d, { registry, prefix: 'kv_' })
    collectMetrics(c, { registry, prefix: 'kv_' })
    const before = await scrape()
    expect(valueOf(before, 'kv_regions', { agent: d.name })).toBe(0)
    expect(before.samples.every((s) => s.name.startsWith('kv_'))).toBe(true)
    await d.close()
    const after = await scrape()
    expect(after.samples.filter((s) => s.labels.agent === d.name)).toEqual([])
    expect(valueOf(after, 'kv_regions', { agent: c.name })).toBe(1)
    withPrefix.unregister() // already dropped: nothing left to do

    throwsWith(() => collectMetrics(c, { registry, prefix: 'kv-' }), 'ERR_INVALID_ARG')
    throwsWith(() => collectMetrics(c, { registry, maxPeers: -1 }), 'ERR_INVALID_ARG')
    throwsWith(() => collectMetrics({} as Agent, { registry }), 'ERR_INVALID_ARG')

    const open = new Registry(Registry.OPENMETRICS_CONTENT_TYPE)
    const om = collectMetrics(a, { registry: open })
    const text = await open.metrics()
    expect(text).toMatch(/^# TYPE kvxfer_transfers counter$/m)
    expect(text).toMatch(new RegExp(`^kvxfer_transfers_total\\{agent="${a.name}",op="write",peer="${b.name}"\\} 5$`, 'm'))
    expect(text).toMatch(/^# EOF$/m)
    expect(text).not.toMatch(/_total_total/)
    om.unregister()
  })
})

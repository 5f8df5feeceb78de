/**
 * `kvxfer bench`: entry point. Parses the command line, runs the mode, and
 * writes the table, --json, --csv and --chart.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { USAGE, UsageError, parseBenchArgs, type BenchOptions } from './args';
import { renderChart } from './chart';
import { formatHandoffTable, runHandoffBench } from './handoff';
import { runInitiator, type RunContext } from './initiator';
import { startLoad } from './load';
import { runLocal } from './local';
import { vramUnavailable } from './memory';
import { formatCsv, formatTable, validateReport, type Report } from './report';
import { runTarget } from './target';

function quote(arg: string): string {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`;
}

function writeFile(file: string, text: string): void {
  fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
  fs.writeFileSync(file, text);
}

export function writeOutputs(report: Report, options: BenchOptions): void {
  if (options.json !== undefined) writeFile(options.json, `${JSON.stringify(report, null, 2)}\n`);
  if (options.csv !== undefined) writeFile(options.csv, formatCsv(report));
  if (options.chart !== undefined) writeFile(options.chart, renderChart(report));
}

/** Runs `kvxfer bench ...` (argv after 'bench'); resolves with the exit status. */
export async function bench(argv: string[]): Promise<number> {
  // Baseline tools get the environment the user gave, not what loading UCX adds to it.
  const userEnv = { ...process.env };
  let options: BenchOptions;
  try {
    const parsed = parseBenchArgs(argv);
    if (parsed.help) {
      process.stdout.write(USAGE);
      return 0;
    }
    options = parsed.options;
  } catch (error) {
    if (error instanceof UsageError) {
      process.stderr.write(`kvxfer bench: ${error.message}\nRun 'kvxfer bench --help' for the options.\n`);
      return 2;
    }
    throw error;
  }
  if (options.from !== undefined) {
    let report: Report;
    try {
      report = JSON.parse(fs.readFileSync(options.from, 'utf8')) as Report;
    } catch (error) {
      process.stderr.write(`kvxfer bench: cannot read ${options.from}: ${error instanceof Error ? error.message : String(error)}\n`);
      return 1;
    }
    const problems = validateReport(report);
    if (problems.length > 0) {
      process.stderr.write(`kvxfer bench: ${options.from} is not a kvxfer-bench report:\n  ${problems.slice(0, 10).join('\n  ')}\n`);
      return 1;
    }
    process.stdout.write(`${report.command}\n\n${formatTable(report)}`);
    writeOutputs({ ...report }, { ...options, json: undefined });
    return 0;
  }
  const noVram = options.mem === 'vram' ? vramUnavailable(options.engine, options.mode === 'target' ? options.device : Math.max(options.device, options.peerDevice)) : undefined;
  if (noVram !== undefined) {
    process.stderr.write(`kvxfer bench: ${noVram}\n`);
    return 1;
  }
  if (options.mode === 'target') return runTarget(options, userEnv);
  const load = options.load > 0 ? startLoad(options.load) : undefined;
  try {
    return await run(options, argv, userEnv);
  } finally {
    await load?.stop();
  }
}

async function run(options: BenchOptions, argv: string[], userEnv: NodeJS.ProcessEnv): Promise<number> {
  if (options.handoff !== undefined) {
    const command = ['kvxfer', 'bench', ...argv].map(quote).join(' ');
    const report = await runHandoffBench({ ...options, handoff: options.handoff }, command, (line) => process.stderr.write(`${line}\n`));
    process.stdout.write(`\n${formatHandoffTable(report)}`);
    if (options.json !== undefined) writeFile(options.json, `${JSON.stringify(report, null, 2)}\n`);
    return 0;
  }

  const ctx: RunContext = {
    options,
    command: ['kvxfer', 'bench', ...argv].map(quote).join(' '),
    userEnv,
    log: (line) => process.stderr.write(`${line}\n`),
  };
  const report = options.mode === 'initiator' ? await runInitiator(ctx, options.connect!.host, options.connect!.port) : await runLocal(ctx);
  process.stdout.write(`\n${formatTable(report)}`);
  writeOutputs(report, options);
  const written = [options.json, options.csv, options.chart].filter((f) => f !== undefined);
  if (written.length > 0) process.stderr.write(`wrote ${written.join(', ')}\n`);
  const failed = (report as Report & { failed?: number }).failed ?? 0;
  if (failed > 0) {
    process.stderr.write(`kvxfer bench: ${failed} point(s) failed their --check or --notify verification\n`);
    return 1;
  }
  return 0;
}

#!/usr/bin/env node
// Writes lib/protocol.ts from native/protocol.h, the one source of the
// constants the addon and the TypeScript layer share (error codes, memory
// kinds, ops, event kinds, descriptor-list layout, limits). Run by
// `npm run build:ts` before tsc.
//
//   node scripts/gen-protocol.js           write lib/protocol.ts
//   node scripts/gen-protocol.js --check   exit 1 if lib/protocol.ts is stale
'use strict';

const fs = require('node:fs');
const path = require('node:path');

const root = path.join(__dirname, '..');
const headerPath = path.join(root, 'native', 'protocol.h');
const outputPath = path.join(root, 'lib', 'protocol.ts');

function fail(message) {
  console.error(`gen-protocol: ${message}`);
  process.exit(1);
}

// Macro arguments, split at the commas outside string literals.
function splitArguments(text) {
  const parts = [];
  let current = '';
  let quoted = false;
  for (const ch of text) {
    if (ch === '"') quoted = !quoted;
    if (ch === ',' && !quoted) {
      parts.push(current.trim());
      current = '';
    } else {
      current += ch;
    }
  }
  parts.push(current.trim());
  return parts;
}

// The X(...) entries of `#define KVXFER_<name>(X) \` and its continuation lines.
function list(header, name) {
  const lines = header.split('\n');
  const start = lines.findIndex((l) => l.startsWith(`#define KVXFER_${name}(X)`));
  if (start < 0) fail(`native/protocol.h has no KVXFER_${name} list`);
  const entries = [];
  for (let i = start + 1; i < lines.length; i++) {
    const line = lines[i].trim();
    const entry = /^X\((.*)\)\s*\\?$/.exec(line);
    if (entry === null) fail(`KVXFER_${name}: cannot read '${line}'`);
    entries.push(splitArguments(entry[1]));
    if (!line.endsWith('\\')) break;
  }
  return entries;
}

function integer(text, where) {
  // C integer literals and the few operators the header uses.
  if (!/^[0-9a-fA-FxX\s*<()]+$/.test(text)) fail(`${where}: '${text}' is not a plain integer expression`);
  const value = Function(`"use strict"; return (${text});`)();
  if (!Number.isSafeInteger(value)) fail(`${where}: '${text}' is not a safe integer`);
  return value;
}

const unquote = (text, where) => {
  const m = /^"([^"]*)"$/.exec(text);
  if (m === null) fail(`${where}: expected a string, got ${text}`);
  return m[1];
};

function generate() {
  const header = fs.readFileSync(headerPath, 'utf8');
  const errorEntries = list(header, 'ERROR_CODES').map(([, text, doc]) => [
    unquote(text, 'ERROR_CODES'),
    unquote(doc, 'ERROR_CODES'),
  ]);
  const errorCodes = errorEntries.map(([code]) => code);
  const table = (name) =>
    list(header, name).map(([, value, text]) => [unquote(text, name), integer(value, name)]);
  const memKinds = table('MEM_KINDS');
  const ops = table('XFER_OPS');
  const events = list(header, 'EVENT_KINDS').map(([name, value]) => [name, integer(value, 'EVENT_KINDS')]);
  const limits = list(header, 'LIMITS').map(([name, value]) => [name, integer(value, 'LIMITS')]);
  const object = (entries, indent = '  ') =>
    `{\n${entries.map(([k, v]) => `${indent}${/^[A-Za-z_$][\w$]*$/.test(k) ? k : JSON.stringify(k)}: ${typeof v === 'string' ? `'${v}'` : v},`).join('\n')}\n}`;
  return `// Generated from native/protocol.h by scripts/gen-protocol.js. Do not edit:
// change native/protocol.h and run \`npm run build:ts\`.

/** The stable error codes of kvxfer: \`KvxferError.code\` is one of these. */
export const ErrorCode = {
${errorEntries.map(([code, doc]) => `  /** ${doc} */\n  ${code.replace(/^ERR_/, '')}: '${code}',`).join('\n')}
} as const;

/** One of the stable codes in {@link ErrorCode}. */
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** @internal The error codes in the addon's order (native/status.h), for the load-time check. */
export const ERROR_CODES = [${errorCodes.map((c) => `'${c}'`).join(', ')}] as const;

/** @internal Memory kinds as the addon numbers them. */
export const MEM_KIND = ${object(memKinds)} as const;

/** @internal Transfer directions as the addon numbers them. */
export const XFER_OP = ${object(ops)} as const;

/** @internal The \`kind\` of the event objects the addon delivers. */
export const EVENT_KIND = ${object(events)} as const;

/** @internal Layouts and limits both sides check (see native/protocol.h). */
export const LIMITS = ${object(limits)} as const;
`;
}

function main() {
  const text = generate();
  if (process.argv.includes('--check')) {
    const current = fs.existsSync(outputPath) ? fs.readFileSync(outputPath, 'utf8') : '';
    if (current !== text) fail('lib/protocol.ts is out of date with native/protocol.h: run `npm run build:ts`');
    return;
  }
  if (!fs.existsSync(outputPath) || fs.readFileSync(outputPath, 'utf8') !== text) fs.writeFileSync(outputPath, text);
}

if (require.main === module) main();
module.exports = { generate, outputPath };

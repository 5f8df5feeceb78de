#!/usr/bin/env node
// The package's install script (package.json "install"). It builds the addon
// from source only when no binary for this platform is there:
//
// - a prebuilt binary (prebuilds/<platform>-<arch>/) or an earlier build
//   (build/Release/) that loads: nothing to do;
// - one that exists but cannot load because UCX's runtime libraries are
//   missing: a build would need them too, so nothing is built; the install
//   succeeds with a warning, and the first use of kvxfer throws a
//   KvxferError that says what to install (lib/native.ts);
// - one that fails to load for another reason, or none at all: build from
//   source (`node-gyp rebuild`, which needs libucx-dev, pkg-config, g++,
//   make and python3). A failed build fails the install, as it should.
//
// KVXFER_BUILD_FROM_SOURCE=1 (or npm's --build-from-source) always builds.
'use strict';

const { spawnSync } = require('node:child_process');
const path = require('node:path');

const root = path.join(__dirname, '..');
const UCX_MISSING = /lib(ucp|uct|ucs|ucm)\.so/;

function log(line) {
  process.stderr.write(`kvxfer: ${line}\n`);
}

function build(why) {
  log(`${why}; building from source (node-gyp rebuild)`);
  // npm puts its own node-gyp on PATH for install scripts; npm_config_node_gyp names it too.
  const gyp = process.env.npm_config_node_gyp;
  const [command, args] = gyp ? [process.execPath, [gyp, 'rebuild']] : ['node-gyp', ['rebuild']];
  const child = spawnSync(command, args, { cwd: root, stdio: 'inherit' });
  if (child.error) {
    log(`could not run node-gyp: ${child.error.message}`);
    process.exit(1);
  }
  process.exit(child.status === null ? 1 : child.status);
}

function main() {
  if (process.env.KVXFER_BUILD_FROM_SOURCE === '1' || process.env.npm_config_build_from_source === 'true') {
    build('asked to build from source');
  }
  let binary;
  try {
    binary = require('node-gyp-build').resolve(root);
  } catch (error) {
    build(`no prebuilt binary for ${process.platform}-${process.arch} (${error.message.split('\n')[0]})`);
  }
  // The loader's environment: UCX must not take over Node's signal handlers.
  process.env.UCX_ERROR_SIGNALS ??= '';
  process.env.UCX_MEM_EVENTS ??= 'no';
  try {
    require(binary);
  } catch (error) {
    const message = String((error && error.message) || error);
    if (UCX_MISSING.test(message)) {
      log(`installed ${path.relative(root, binary)}, but it cannot load here: UCX's runtime libraries are missing`);
      log('  (' + message.split('\n')[0] + ')');
      log('  install them before using kvxfer: `apt-get install libucx0` on Debian/Ubuntu,');
      log('  or point LD_LIBRARY_PATH at the lib/ of your UCX installation');
      return;
    }
    build(`${path.relative(root, binary)} does not load here (${message.split('\n')[0]})`);
  }
}

main();

#!/usr/bin/env bash
# npm run test:asan: the addon built with AddressSanitizer and
# UndefinedBehaviorSanitizer (build/asan/kvxfer.node), and the test suite run
# on it: every Node process the tests start (vitest's workers, the peers they
# fork, the bench's target) loads that build (KVXFER_ADDON) with the ASan
# runtime preloaded. Each sanitizer report goes to its own file under
# build/asan/logs/; the run is clean when the tests pass and there is none.
#
#   npm run test:asan                 # the suite (less what is sanitized or
#                                     # measured elsewhere: see SKIPPED), then
#                                     # the valgrind smoke (valgrind-smoke.sh)
#   npm run test:asan -- --short      # the part npm test runs (test/asan/)
#   npm run test:asan -- test/unit    # these test files only
#   --no-valgrind (first)             # leave the valgrind smoke out
#
# What the options are and why (ASAN_OPTIONS, UBSAN_OPTIONS):
# - detect_leaks=0: Node and V8 free nothing at exit by design, and every
#   allocation of the addon is made under Node's frames, so LeakSanitizer
#   would report thousands of blocks and no suppression can tell the
#   addon's apart. Leaks are measured by npm run test:soak (RSS, handles and
#   fds over 10^6 transfers) and by the valgrind smoke (scripts/valgrind-smoke.sh:
#   "definitely lost" blocks allocated by the addon fail it).
# - protect_shadow_gap=0: the CUDA driver maps memory at addresses ASan
#   reserves as its shadow gap; without this a GPU machine fails at the
#   first CUDA call. Nothing changes where there is no driver.
# - halt_on_error (ASan's default) stops a process at its first memory
#   error, and the test that ran it fails; UBSan reports and goes on, so one
#   run lists every finding.
# - UCX_MEM_EVENTS=no (kvxfer's default anyway): UCX's memory hooks patch
#   malloc and mmap, which ASan has replaced.
# No suppression is needed: UCX and Node are not instrumented, and the only
# checks in their code are ASan's interceptors of libc calls (memcpy and the
# like), which found nothing. SUPPRESSIONS below is where one would go, each
# with its reason.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
ROOT=$(pwd)
OUT=$ROOT/build/asan
CXX=${CXX:-g++}

SHORT=(test/unit test/integration/transfer.test.ts test/integration/lifecycle.test.ts
  test/integration/errors.test.ts test/integration/lying-metadata.test.ts test/integration/peers.test.ts
  test/integration/kv-handoff.test.ts test/integration/metadata-updates.test.ts test/integration/side-channel.test.ts
  test/integration/foreign-messages.test.ts test/integration/shared-pages.test.ts
  test/faults/kill.test.ts test/faults/cancel.test.ts test/faults/load-forget.test.ts)
# Sanitized on their own (test/native and test/fuzz build their own ASan +
# UBSan binaries), opt-in measurements (test/soak), and this wrapper.
SKIPPED=(test/native test/fuzz test/soak test/asan)

files=()
valgrind=1
if [ "${1:-}" = "--no-valgrind" ]; then
  valgrind=0
  shift
fi
if [ "${1:-}" = "--short" ]; then
  files=("${SHORT[@]}")
  shift
fi
files+=("$@")

libasan=$("$CXX" -print-file-name=libasan.so)
if [ ! -e "$libasan" ]; then
  echo "test:asan: $CXX has no AddressSanitizer runtime (Debian: libasan8, with g++)" >&2
  exit 2
fi

# The addon's own sources and build file, built in a tree of their own so
# that build/Release (what npm test and users load) stays the plain build.
build() {
  local tree=$OUT/tree
  mkdir -p "$tree/bench"
  rm -rf "$tree/native" "$tree/bench/native"
  cp -r "$ROOT/native" "$tree/native"
  cp -r "$ROOT/bench/native" "$tree/bench/native"
  cp "$ROOT/binding.gyp" "$ROOT/package.json" "$tree/"
  ln -sfn "$ROOT/node_modules" "$tree/node_modules"
  local flags="-fsanitize=address,undefined -fno-omit-frame-pointer -g -O1"
  # node-gyp finds Node's headers where npm says (npm_config_nodedir, set
  # under npm run); run directly, ask npm.
  local nodedir=${npm_config_nodedir:-$(npm config get nodedir 2>/dev/null || true)}
  [ "$nodedir" = "undefined" ] && nodedir=
  (cd "$tree" && CXXFLAGS="$flags" CFLAGS="$flags" LDFLAGS="-fsanitize=address,undefined" \
    "$ROOT/node_modules/.bin/node-gyp" rebuild -j 2 ${nodedir:+--nodedir="$nodedir"} >"$OUT/build.log" 2>&1) || {
    tail -30 "$OUT/build.log" >&2
    echo "test:asan: the sanitizer build failed (build/asan/build.log)" >&2
    exit 2
  }
  cp "$tree/build/Release/kvxfer.node" "$OUT/kvxfer.node"
}

mkdir -p "$OUT"
stamp=$OUT/kvxfer.node
if [ ! -e "$stamp" ] || [ -n "$(find "$ROOT/native" "$ROOT/binding.gyp" -newer "$stamp" -print -quit)" ]; then
  echo "test:asan: building build/asan/kvxfer.node (ASan + UBSan)" >&2
  build
fi

rm -rf "$OUT/logs"
mkdir -p "$OUT/logs"
exclude=()
for s in "${SKIPPED[@]}"; do exclude+=(--exclude "$s/**"); done

KVXFER_ADDON=$OUT/kvxfer.node \
LD_PRELOAD="$libasan${LD_PRELOAD:+ $LD_PRELOAD}" \
ASAN_OPTIONS="detect_leaks=0:protect_shadow_gap=0:log_path=$OUT/logs/asan:log_exe_name=1" \
UBSAN_OPTIONS="print_stacktrace=1:log_path=$OUT/logs/ubsan:log_exe_name=1" \
UCX_MEM_EVENTS=no \
  "$ROOT/node_modules/.bin/vitest" run "${exclude[@]}" --outputFile.json="$OUT/vitest-report.json" "${files[@]}"
tests_rc=$?

reports=$(find "$OUT/logs" -type f | wc -l)
summary=$(node -e '
  const r = require(process.argv[1]);
  console.log(`${r.numPassedTests} passed, ${r.numFailedTests} failed, ${r.numPendingTests + (r.numTodoTests ?? 0)} skipped`);
' "$OUT/vitest-report.json" 2>/dev/null || echo "no vitest report")
if [ "$reports" -gt 0 ]; then
  echo "test:asan: $reports sanitizer report(s):" >&2
  for f in "$OUT"/logs/*; do
    echo "== $f" >&2
    head -40 "$f" >&2
  done
fi
echo "test:asan: $summary; sanitizer reports: $reports"
smoke_rc=0
if [ "$valgrind" -eq 1 ]; then
  bash "$ROOT/scripts/valgrind-smoke.sh"
  smoke_rc=$?
fi
[ "$tests_rc" -eq 0 ] && [ "$reports" -eq 0 ] && [ "$smoke_rc" -eq 0 ]

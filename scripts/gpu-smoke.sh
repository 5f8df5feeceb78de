#!/usr/bin/env bash
# GPU smoke run, on a GPU node with kvxfer built (scripts/setup.sh): the GPU
# tests (test/gpu), then a short `kvxfer bench --mem vram` (VRAM to VRAM
# between two processes beside cudaMemcpy device to device, in the same run;
# GPU 0 to GPU 1 too where there are two), then one summary. Bounded to
# 5 minutes; exits non-zero when a test fails or the bench cannot run.
#
#   scripts/gpu-smoke.sh                 # the UCX kvxfer links (must have CUDA)
#   KVXFER_UCX_PREFIX=/path/to/ucx scripts/gpu-smoke.sh
#
# KVXFER_UCX_PREFIX points at a CUDA-enabled UCX installation (configured
# --with-cuda): its lib/ goes first on the loader path and its transport
# modules (lib/ucx) are the ones UCX loads. Debian's libucx has no CUDA, so
# on a stock Debian/Ubuntu node the VRAM tests skip with that reason.
# KVXFER_GPU_SMOKE_OUT names the folder for the reports (default: a new
# temporary one).
set -uo pipefail
cd "$(dirname "$0")/.."

started=$SECONDS
out=${KVXFER_GPU_SMOKE_OUT:-$(mktemp -d -t kvxfer-gpu-smoke.XXXXXX)}
mkdir -p "$out"

if [[ -n "${KVXFER_UCX_PREFIX:-}" ]]; then
  if [[ ! -e "$KVXFER_UCX_PREFIX/lib/libucp.so.0" ]]; then
    echo "gpu-smoke: KVXFER_UCX_PREFIX=$KVXFER_UCX_PREFIX has no lib/libucp.so.0" >&2
    exit 2
  fi
  export LD_LIBRARY_PATH="$KVXFER_UCX_PREFIX/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export UCX_MODULE_DIR="$KVXFER_UCX_PREFIX/lib/ucx"
fi
if [[ ! -e dist/cli/main.js || ! -e build/Release/kvxfer.node ]]; then
  echo "gpu-smoke: kvxfer is not built here; run scripts/setup.sh (or npm ci && npm run build) first" >&2
  exit 2
fi

echo "== kvxfer info (GPU memory)"
node dist/cli/main.js info | sed -n '/^GPU memory/,/^$/p' | tee "$out/info.txt"
node dist/cli/main.js info --json >"$out/info.json"
gpus=$(node -e "console.log(require('./dist/cuda.js').deviceCount())")

echo "== GPU tests (test/gpu)"
timeout 200 npx vitest run test/gpu 2>&1 | tee "$out/gpu-tests.log"
tests_status=${PIPESTATUS[0]}
cp -f .vitest-report.json "$out/gpu-tests.json" 2>/dev/null

bench_status=0
run_bench() { # $1: report name, $2: target GPU
  echo "== kvxfer bench --mem vram, GPU 0 -> GPU $2"
  timeout 80 node dist/cli/main.js bench --engine ucx --mem vram --device 0 --peer-device "$2" \
    --block-sizes 1M,4M,16M,64M --duration 0.5 --repeat 3 --no-progress --json "$out/$1.json" 2>&1 |
    tee "$out/$1.log"
  local status=${PIPESTATUS[0]}
  [[ $status -eq 0 ]] || bench_status=$status
}
if [[ "$gpus" -gt 0 ]]; then
  run_bench bench-vram-same-gpu 0
  [[ "$gpus" -gt 1 ]] && run_bench bench-vram-two-gpus 1
else
  echo "== kvxfer bench --mem vram: not run (no CUDA device)"
  bench_status=1
fi

echo
echo "== summary ($((SECONDS - started)) s; reports in $out)"
OUT="$out" node - <<'EOF'
const fs = require('node:fs');
const path = require('node:path');
const out = process.env.OUT;
const read = (name) => { try { return JSON.parse(fs.readFileSync(path.join(out, name), 'utf8')); } catch { return undefined; } };
const info = read('info.json');
if (info) {
  console.log(`GPUs: ${info.cuda.deviceCount > 0 ? info.cuda.devices.map((d) => `${d.index} ${d.name}`).join('; ') : `none (${info.cuda.reason})`}`);
  console.log(`UCX ${info.engines.ucx.version}: CUDA ${info.engines.ucx.cuda?.supported ? `yes (${info.engines.ucx.cuda.transports.join(', ')})` : `no (${info.engines.ucx.cuda?.reason})`}`);
}
const tests = read('gpu-tests.json');
if (tests) {
  console.log(`GPU tests: ${tests.numPassedTests} passed, ${tests.numFailedTests} failed, ${tests.numPendingTests + (tests.numTodoTests ?? 0)} skipped`);
  for (const file of tests.testResults) {
    for (const t of file.assertionResults) {
      if (t.status !== 'passed') console.log(`  ${t.status.padEnd(7)} ${t.fullName}${t.failureMessages?.length ? `\n          ${t.failureMessages[0].split('\n')[0]}` : ''}`);
    }
  }
} else {
  console.log('GPU tests: no report (the run did not finish)');
}
for (const name of ['bench-vram-same-gpu', 'bench-vram-two-gpus']) {
  const report = read(`${name}.json`);
  if (!report) continue;
  const kvxfer = report.series.find((s) => s.kind === 'kvxfer');
  const base = report.series.find((s) => s.baseline === 'cuda_memcpy');
  console.log(`${name}: kvxfer vs ${base?.name ?? 'cuda_memcpy'} (target >= 0.8 at >= 4 MiB)`);
  for (const p of kvxfer?.points ?? []) {
    const b = base?.points.find((q) => q.blockSize === p.blockSize);
    const ratio = p.ratio?.cuda_memcpy;
    const verdict = p.blockSize >= 4 << 20 && ratio != null ? (ratio >= 0.8 ? 'met' : 'MISSED') : '';
    console.log(`  ${String(p.blockSize >> 20).padStart(3)} MiB  kvxfer ${p.figures.gbps.toFixed(1).padStart(6)} GB/s  cudaMemcpy ${b ? b.figures.gbps.toFixed(1).padStart(6) : '     ?'} GB/s  ratio ${ratio != null ? ratio.toFixed(2) : '?'} ${verdict}`);
  }
}
EOF
if [[ $tests_status -ne 0 || $bench_status -ne 0 ]]; then
  echo "gpu-smoke: FAILED (tests exit $tests_status, bench exit $bench_status)"
  exit 1
fi
echo "gpu-smoke: ok"

#!/usr/bin/env bash
# kvxfer setup: system packages, npm dependencies, build, then the main job
# (a two-process transfer demo, `npm run demo`).
#
#   bash scripts/setup.sh
#
# Fresh Debian/Ubuntu machine; runs as root, or through sudo when not root.
# Non-interactive and idempotent: running it again reinstalls nothing that is
# already there and rebuilds from scratch.
#
# Environment:
#   KVXFER_SETUP_NO_DEMO=1   set up and build, but do not run the demo
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT="$(pwd)"

export DEBIAN_FRONTEND=noninteractive
export NEEDRESTART_MODE=a   # Ubuntu: never prompt about restarting services

# Packages: UCX (headers, libraries, ucx_info/ucx_perftest), pkg-config (the
# build finds UCX with it), and what node-gyp needs to compile the addon:
# python3, make, a C++ compiler. ca-certificates lets npm reach the registry
# over TLS on a minimal image. etcd-server: the etcd the discovery tests
# start (EtcdDiscovery; they skip without /usr/bin/etcd). clang and
# libclang-rt-dev: libFuzzer, for the native fuzz targets (npm run test:fuzz).
# valgrind: the memcheck smoke of the addon (npm run test:asan; g++ brings
# the AddressSanitizer runtime itself).
APT_PACKAGES=(libucx-dev ucx-utils pkg-config python3 make g++ ca-certificates etcd-server clang libclang-rt-dev valgrind)
NODE_MIN_MAJOR=20

step() { printf '\n==> %s\n' "$*"; }
run() { printf '+ %s\n' "$*"; "$@"; }
die() { printf 'setup.sh: error: %s\n' "$*" >&2; exit 1; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    # -n: fail instead of prompting when there is no terminal to prompt on.
    if [ -t 0 ]; then SUDO=(sudo); else SUDO=(sudo -n); fi
  else
    die "not root and sudo is not installed: run this script as root"
  fi
fi

as_root() {
  if [ "${#SUDO[@]}" -gt 0 ]; then
    # sudo resets the environment; pass the non-interactive settings through.
    run "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=a "$@"
  else
    run "$@"
  fi
}

step "kvxfer setup in ${REPO_ROOT}"
command -v apt-get >/dev/null 2>&1 || die "apt-get not found: this script supports Debian/Ubuntu"

step "Updating package lists"
as_root apt-get update

step "Installing system packages: ${APT_PACKAGES[*]}"
as_root apt-get install -y --no-install-recommends "${APT_PACKAGES[@]}"

# Node.js >= 20 and npm. Use the one on PATH when it is new enough; otherwise
# take the distribution's package when that is new enough (Debian 13,
# Ubuntu 24.10 and later). Debian 12 and Ubuntu 24.04 ship Node 18: install
# Node 20+ first (nodesource.com, nvm, or the official tarball).
node_major() { node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }

step "Checking Node.js (>= ${NODE_MIN_MAJOR}) and npm"
if ! command -v node >/dev/null 2>&1 || [ "$(node_major)" -lt "${NODE_MIN_MAJOR}" ]; then
  candidate="$(apt-cache policy nodejs 2>/dev/null | awk '/Candidate:/ {print $2}')"
  candidate_major="$(printf '%s' "${candidate}" | sed -E 's/^([0-9]+:)?([0-9]+).*/\2/')"
  if [[ "${candidate_major}" =~ ^[0-9]+$ ]] && [ "${candidate_major}" -ge "${NODE_MIN_MAJOR}" ]; then
    as_root apt-get install -y --no-install-recommends nodejs npm
  else
    have="$(command -v node >/dev/null 2>&1 && node --version || echo none)"
    die "Node.js >= ${NODE_MIN_MAJOR} is required (found: ${have}; apt offers: ${candidate:-none}). Install Node.js ${NODE_MIN_MAJOR}+ and npm, then run this script again."
  fi
fi
command -v npm >/dev/null 2>&1 || as_root apt-get install -y --no-install-recommends npm
printf 'node %s, npm %s\n' "$(node --version)" "$(npm --version)"

step "Checking UCX"
printf 'pkg-config ucx: %s\n' "$(pkg-config --modversion ucx 2>/dev/null || echo 'not found (the build falls back to -lucp -luct -lucs)')"
if command -v ucx_info >/dev/null 2>&1; then
  printf 'ucx_info: %s\n' "$(ucx_info -v 2>/dev/null | sed -n 1p || true)"
fi

step "Installing npm dependencies (npm ci)"
run npm ci

step "Building (native addon + TypeScript): npm run build"
run npm run build

if [ "${KVXFER_SETUP_NO_DEMO:-0}" = "1" ]; then
  step "Skipping the demo (KVXFER_SETUP_NO_DEMO=1)"
else
  step "Running the main job: npm run demo (two-process transfer demo)"
  run npm run demo
fi

step "Setup complete. Run the tests with: npm test"

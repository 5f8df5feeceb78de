import { defineConfig } from 'vitest/config';

// kvxfer's tests load a native addon and spawn worker processes that move
// data over UCX. The CI machine has 2 cores and transfers are CPU-bound, so
// test files run one at a time in forked processes (not worker threads: a
// native addon and child processes are safer in a process of their own).
//
// `npm test` (= `vitest run`) always writes vitest's JSON report to
// .vitest-report.json (git-ignored) next to the usual console output;
// .ci/run reads it to print the final "N passed, N failed, N skipped" line.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    exclude: ['**/node_modules/**', 'dist/**', 'build/**'],
    environment: 'node',
    pool: 'forks',
    fileParallelism: false,
    maxWorkers: 1,
    testTimeout: 60_000,
    hookTimeout: 60_000,
    teardownTimeout: 30_000,
    reporters: ['default', 'json'],
    outputFile: { json: '.vitest-report.json' },
  },
});

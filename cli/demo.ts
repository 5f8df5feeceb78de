/**
 * `kvxfer demo`: runs examples/disagg (shipped with the package): a router,
 * a prefill and a decode process hand requests' KV caches over with
 * KvHandoff (pull, push and layer-wise streaming), found through the TCP
 * side channel or etcd (--etcd URL), every byte checked at the decode side,
 * with a timeline of compute against transfers. The example is plain
 * JavaScript so that it reads as an application would be written; this
 * command only starts it with the options it was given.
 */
import { spawn } from 'node:child_process';
import { constants } from 'node:os';
import * as path from 'node:path';

/** examples/disagg/router.mjs of the package this command runs from (dist/cli/ is two levels down). */
export const ROUTER = path.join(__dirname, '..', '..', 'examples', 'disagg', 'router.mjs');

export function demo(args: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [ROUTER, ...args], { stdio: 'inherit' });
    child.once('error', reject);
    // Ctrl-C reaches the whole process group; the router settles its workers.
    child.once('exit', (code, signal) => resolve(code ?? 128 + (signal !== null ? constants.signals[signal] : 0)));
  });
}

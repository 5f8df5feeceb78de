/**
 * Where NIXL is on this machine, looked up the way the NIXL engine loads it
 * (see DESIGN.md): KVXFER_NIXL_LIB, then $NIXL_PREFIX/lib[/<arch>], then the
 * same under /opt/nvidia/nvda_nixl, then the loader's usual directories.
 * Plugins are NIXL_PLUGIN_DIR, or plugins/ beside libnixl.so.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

const ARCH_DIR: Record<string, string> = { x64: 'x86_64-linux-gnu', arm64: 'aarch64-linux-gnu' };

export interface NixlInstall {
  found: boolean;
  /** libnixl_capi.so, the C API the NIXL engine loads. */
  capi?: string;
  /** libnixl.so beside it. */
  library?: string;
  pluginDir?: string;
  plugins: string[];
  /** Every place looked at, in order. */
  searched: string[];
  version?: string;
  /** A NIXL outside the search path, and how to point kvxfer at it. */
  hint?: string;
}

function libDirs(prefix: string): string[] {
  const arch = ARCH_DIR[process.arch];
  return [path.join(prefix, 'lib'), ...(arch ? [path.join(prefix, 'lib', arch)] : []), path.join(prefix, 'lib64')];
}

function isFile(file: string): boolean {
  try {
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

export function findNixl(env: NodeJS.ProcessEnv = process.env): NixlInstall {
  const candidates: string[] = [];
  if (env.KVXFER_NIXL_LIB) candidates.push(env.KVXFER_NIXL_LIB);
  const dirs: string[] = [];
  if (env.NIXL_PREFIX) dirs.push(...libDirs(env.NIXL_PREFIX));
  dirs.push(...libDirs('/opt/nvidia/nvda_nixl'));
  for (const d of (env.LD_LIBRARY_PATH ?? '').split(':')) if (d) dirs.push(d);
  const arch = ARCH_DIR[process.arch];
  dirs.push('/usr/local/lib', ...(arch ? [`/usr/local/lib/${arch}`, `/usr/lib/${arch}`] : []), '/usr/lib');
  for (const d of dirs) candidates.push(path.join(d, 'libnixl_capi.so'));

  const searched = [...new Set(candidates)];
  const capi = searched.find(isFile);
  if (capi === undefined) {
    // Not where kvxfer looks; a common prefix elsewhere earns a hint.
    for (const prefix of ['/opt/nixl', '/usr/local/nixl']) {
      const elsewhere = libDirs(prefix).map((d) => path.join(d, 'libnixl_capi.so')).find(isFile);
      if (elsewhere !== undefined) {
        return { found: false, plugins: [], searched, hint: `${elsewhere} exists: set NIXL_PREFIX=${prefix} (or KVXFER_NIXL_LIB=${elsewhere})` };
      }
    }
    return { found: false, plugins: [], searched };
  }
  const dir = path.dirname(fs.realpathSync(capi));
  const library = isFile(path.join(dir, 'libnixl.so')) ? path.join(dir, 'libnixl.so') : undefined;
  const pluginDir = env.NIXL_PLUGIN_DIR || path.join(dir, 'plugins');
  let plugins: string[] = [];
  try {
    plugins = fs
      .readdirSync(pluginDir)
      .map((f) => /^libplugin_(.+)\.so$/.exec(f)?.[1])
      .filter((n): n is string => n !== undefined)
      .sort();
  } catch {
    // no plugin directory
  }
  let version: string | undefined;
  for (const pc of [path.join(dir, 'pkgconfig', 'nixl.pc'), path.join(dir, '..', 'pkgconfig', 'nixl.pc')]) {
    try {
      version = /^Version:\s*(\S+)/m.exec(fs.readFileSync(pc, 'utf8'))?.[1];
      if (version) break;
    } catch {
      // not there
    }
  }
  return { found: true, capi, library, pluginDir, plugins, searched, ...(version ? { version } : {}) };
}

import { binding } from './native';

export interface EngineInfo {
  available: boolean;
  /** Why the engine cannot be used, when it cannot. */
  reason?: string;
  version?: string;
  /** UCX: every transport and device UCX can open here. */
  transports?: { name: string; device: string }[];
  /** NIXL: the libnixl_capi.so that loaded, and its backend plugins. */
  path?: string;
  plugins?: string[];
}

export interface KvxferInfo {
  version: string;
  engines: { ucx: EngineInfo; nixl: EngineInfo };
}

/** What this installation can do: engines, UCX version and transports. */
export function info(): KvxferInfo {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const version = (require('../package.json') as { version: string }).version;
  try {
    const native = binding().info();
    return {
      version,
      engines: {
        ucx: { available: true, version: native.ucx.version, transports: native.ucx.transports },
        nixl: { ...native.nixl },
      },
    };
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    return { version, engines: { ucx: { available: false, reason }, nixl: { available: false, reason } } };
  }
}

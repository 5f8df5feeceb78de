import { binding } from './native';

export interface EngineInfo {
  available: boolean;
  /** Why the engine cannot be used, when it cannot. */
  reason?: string;
  version?: string;
  transports?: { name: string; device: string }[];
}

export interface KvxferInfo {
  version: string;
  engines: { ucx: EngineInfo; nixl: EngineInfo };
}

/** What this installation can do: engines, UCX version and transports. */
export function info(): KvxferInfo {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const version = (require('../package.json') as { version: string }).version;
  let ucx: EngineInfo;
  try {
    const native = binding().info().ucx;
    ucx = { available: true, version: native.version, transports: native.transports };
  } catch (error) {
    ucx = { available: false, reason: error instanceof Error ? error.message : String(error) };
  }
  return {
    version,
    engines: {
      ucx,
      nixl: { available: false, reason: 'this build of kvxfer has no NIXL engine' },
    },
  };
}

import { binding } from './native';

/** What info() says of one engine. */
export interface EngineInfo {
  /** An agent can run on it here. */
  available: boolean;
  /** Why the engine cannot be used, when it cannot. */
  reason?: string;
  /** The engine library's version. */
  version?: string;
  /** UCX: every transport and device UCX can open here. */
  transports?: {
    /** UCX's name for the transport, e.g. 'tcp', 'posix', 'rc_mlx5'. */
    name: string;
    /** The device it runs over, e.g. 'eth0', 'memory', 'mlx5_0:1'. */
    device: string;
  }[];
  /** UCX: built with thread support (what NIXL's own agents, with their progress threads, need). */
  threads?: boolean;
  /** NIXL: the libnixl_capi.so that loaded. */
  path?: string;
  /** NIXL: the backend plugins it found. */
  plugins?: string[];
  /** NIXL: the memory types each backend plugin registers ('DRAM', 'VRAM', 'FILE', ...). */
  memoryTypes?: Record<string, string[]>;
  /** Whether this engine, as loaded here, can register and move GPU memory (`kind: 'vram'`). */
  cuda?: CudaSupport;
}

/** What info() says of an engine's GPU memory support. */
export interface CudaSupport {
  /** Registering `vram` regions works; where false, it fails at once with ERR_ENGINE and this reason. */
  supported: boolean;
  /** Why not, when not. */
  reason?: string;
  /** UCX: the memory domains that register CUDA memory (e.g. 'cuda_cpy', 'cuda_ipc', 'gdr_copy', 'mlx5_0'). */
  memoryDomains?: string[];
  /** UCX: the transports that can move it (e.g. 'cuda_copy', 'cuda_ipc', 'gdr_copy', 'rc_mlx5'). */
  transports?: string[];
  /** NIXL: the backend plugins that take VRAM here. */
  backends?: string[];
}

/** What info() returns. */
export interface KvxferInfo {
  /** kvxfer's own version. */
  version: string;
  /** Each engine, available or not. */
  engines: {
    /** UCX, linked into the addon: unavailable only when the addon does not load. */
    ucx: EngineInfo;
    /** NIXL, loaded at run time where it is installed. */
    nixl: EngineInfo;
  };
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
        ucx: {
          available: true,
          version: native.ucx.version,
          threads: native.ucx.threads,
          transports: native.ucx.transports,
          cuda: native.ucx.cuda,
        },
        nixl: { ...native.nixl },
      },
    };
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    return { version, engines: { ucx: { available: false, reason }, nixl: { available: false, reason } } };
  }
}

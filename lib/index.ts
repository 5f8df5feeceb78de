export {
  Agent,
  Region,
  Transfer,
  type AgentOptions,
  type AgentStats,
  type CostEstimate,
  type FileMemory,
  type TransferTelemetry,
  type Descriptors,
  type EngineName,
  type ExternalMemory,
  type Memory,
  type MemoryKind,
  type Notification,
  type PeerStats,
  type TransferOptions,
  type TransferResult,
  type TransferSpec,
} from './agent';
export { type OperationOptions } from './bounds';
export { DescList, type Desc, type DescLike } from './descs';
export { ErrorCode, KvxferError, type KvxferErrorDetails } from './errors';
export { info, type EngineInfo, type KvxferInfo } from './info';

/**
 * kvxfer: move LLM KV-cache blocks between inference worker processes over
 * UCX or NVIDIA NIXL, with a promise API. Start with {@link Agent.create};
 * the README (the front page of this reference) has the examples.
 *
 * Metrics for Prometheus are in the `kvxfer/prometheus` entry.
 *
 * @module kvxfer
 */
export { Agent } from './agent';
export { Region } from './region';
export { Transfer } from './transfer';
export { DescList, type Desc, type DescLike } from './descs';
export { ErrorCode, KvxferError, type KvxferErrorDetails } from './errors';
export { KvLayout, type KvDtype, type KvElement, type KvHeadLayout, type KvLayoutOptions, type KvOrder, type KvPart, type KvTp } from './kv/layout';
export { KvPool, RemoteKvPool, type KvPairedDescs } from './kv/pool';
export type { KvBlockOptions, KvDescCount } from './kv/runs';
export type { KvPoolDescriptor, KvPoolRegion } from './kv/descriptor';
export { KvHandoff, type Offer, type OfferOptions, type Reservation, type Stream } from './kv/handoff';
export { decodeTicket, type Ticket, type TicketKind } from './kv/ticket';
export { info, type CudaSupport, type EngineInfo, type KvxferInfo } from './info';
export type { FetchPeerOptions, ListenOptions, SideChannel } from './discovery/side-channel';
export { EtcdDiscovery } from './discovery/etcd';
export type { EtcdConnectOptions, EtcdEvent, EtcdJoinOptions, EtcdMembership, EtcdMembershipState, EtcdPeer } from './discovery/etcd';
// Every declaration in types.ts is public; it holds no values.
export * from './types';

import { ErrorCode } from './protocol';

export { ErrorCode };

/** What a KvxferError carries beyond its code and message. */
export interface KvxferErrorDetails {
  /** The engine's own name for the failure, e.g. `UCS_ERR_CONNECTION_RESET`. */
  engineStatus?: string;
  /** The engine's own status number. */
  engineCode?: number;
  /** The error underneath, as `Error.cause`. */
  cause?: unknown;
}

/**
 * Every error kvxfer raises, synchronous or asynchronous, native or not.
 * Branch on `code`; `message` is for people.
 */
export class KvxferError extends Error {
  /** Stable across releases: branch on it. */
  readonly code: ErrorCode;
  /** The engine's own name for the failure, e.g. `UCS_ERR_CONNECTION_RESET`. */
  readonly engineStatus?: string;
  /** The engine's own status number. */
  readonly engineCode?: number;

  /** kvxfer makes these; a caller may too, e.g. to fail a promise the same way. */
  constructor(code: ErrorCode, message: string, details: KvxferErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = 'KvxferError';
    this.code = code;
    if (details.engineStatus !== undefined) this.engineStatus = details.engineStatus;
    if (details.engineCode !== undefined) this.engineCode = details.engineCode;
  }
}

/**
 * Errors of asynchronous operations are created on the owner thread's
 * schedule, far from the caller. This puts the caller's stack (captured
 * cheaply as an Error when the call was made) under the message instead.
 * @internal
 */
export function withCallerStack(error: KvxferError, caller: Error | undefined): KvxferError {
  if (caller?.stack !== undefined) {
    const frames = caller.stack.slice(caller.stack.indexOf('\n') + 1);
    error.stack = `${error.name}: ${error.message}\n${frames}`;
  }
  return error;
}

/** @internal */
export function invalidArg(message: string): KvxferError {
  return new KvxferError(ErrorCode.INVALID_ARG, message);
}

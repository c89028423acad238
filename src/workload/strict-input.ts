import { isUtf8 } from 'node:buffer';
import * as grpc from '@grpc/grpc-js';
import { deepFreeze } from '../common/freeze.js';

/*
 * protobufjs decodes leniently: a known field sent with the wrong wire type, a truncated message
 * or bytes that are not UTF-8 still come out as some value (a varint audience became "\x02" and a
 * token was issued for it). Every Workload API request is checked here, on the raw bytes, before
 * the generated decoder sees it; a request that is not well formed is refused with
 * INVALID_ARGUMENT and no handler runs.
 *
 * Accepted: the known fields with their declared wire type (length-delimited strings holding
 * valid UTF-8, each singular field at most once), and unknown fields that are themselves well
 * formed (proto3 forward compatibility: a newer client may send a field this server does not
 * know). Refused: truncation, field number 0, wire types 3, 4 (groups), 6 and 7, over-long
 * varints, a known field with another wire type, a singular field sent twice (two values where
 * one is checked and the other used is a classic smuggling trick), invalid UTF-8.
 */

interface FieldRule {
  name: string;
  repeated: boolean;
}

type MessageRules = ReadonlyMap<number, FieldRule>;

/** What the deserializer hands on instead of a message when the bytes are not well formed. */
export class MalformedRequest {
  constructor(readonly reason: string) {}
}

/** Reads a base-128 varint at `pos`; undefined when truncated or longer than 10 bytes. */
function readVarint(buf: Buffer, pos: number): { value: number; next: number } | undefined {
  let value = 0;
  let scale = 1;
  for (let i = 0; i < 10; i++) {
    const at = pos + i;
    if (at >= buf.length) return undefined;
    const byte = buf[at]!;
    value += (byte & 0x7f) * scale;
    scale *= 128;
    if ((byte & 0x80) === 0) return { value, next: at + 1 };
  }
  return undefined;
}

/** undefined when `bytes` is a well-formed message under `rules`, else why not. */
export function malformation(bytes: Buffer, rules: MessageRules): string | undefined {
  const seen = new Set<number>();
  let pos = 0;
  while (pos < bytes.length) {
    const tag = readVarint(bytes, pos);
    if (!tag) return 'truncated field tag';
    pos = tag.next;
    const field = Math.floor(tag.value / 8);
    const wireType = tag.value % 8;
    if (field === 0 || field > 0x1fffffff) return 'invalid field number';
    const rule = rules.get(field);
    if (rule) {
      if (wireType !== 2) return `field ${rule.name}: wrong wire type ${wireType}`;
      if (!rule.repeated && seen.has(field)) return `field ${rule.name}: sent more than once`;
      seen.add(field);
    }
    switch (wireType) {
      case 0: {
        const v = readVarint(bytes, pos);
        if (!v) return 'truncated varint';
        pos = v.next;
        break;
      }
      case 1:
        pos += 8;
        break;
      case 5:
        pos += 4;
        break;
      case 2: {
        const len = readVarint(bytes, pos);
        if (!len) return 'truncated length';
        const end = len.next + len.value;
        if (end > bytes.length) return 'truncated length-delimited field';
        // isUtf8 checks in place, without building the string the decoder builds next.
        if (rule && !isUtf8(bytes.subarray(len.next, end))) return `field ${rule.name}: not valid UTF-8`;
        pos = end;
        break;
      }
      default:
        return `wire type ${wireType} is not allowed`;
    }
    if (pos > bytes.length) return 'truncated fixed-width field';
  }
  return undefined;
}

interface DescriptorField {
  name: string;
  number: number;
  label: string;
  type: string;
}

/** The rules of a request type, read from the descriptor proto-loader built from the .proto. */
function rulesOf(definition: grpc.MethodDefinition<unknown, unknown>): MessageRules {
  const fields = ((definition as unknown as { requestType?: { type?: { field?: DescriptorField[] } } }).requestType?.type?.field) ?? [];
  const rules = new Map<number, FieldRule>();
  for (const f of fields) {
    // Every Workload API request field is a string; a new field type needs a rule here first.
    if (f.type !== 'TYPE_STRING') throw new Error(`strict input: field ${f.name} has type ${f.type}, which has no wire rule`);
    rules.set(f.number, { name: f.name, repeated: f.label === 'LABEL_REPEATED' });
  }
  return rules;
}

/** Larger requests are decoded every time (a remembered one is copied out of grpc-js's buffer). */
const MAX_REMEMBERED_REQUEST_BYTES = 4096;

/**
 * A copy of `service` whose request decoders check the bytes first; the Workload API's interceptor
 * (WorkloadLimiter.interceptor) answers INVALID_ARGUMENT for what they mark as MalformedRequest.
 */
export function strictRequests(service: grpc.ServiceDefinition): grpc.ServiceDefinition {
  const out: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const [method, definition] of Object.entries(service)) {
    const rules = rulesOf(definition);
    const decode = definition.requestDeserialize;
    // The last well-formed request of this method, decoded and frozen: clients repeat the same
    // request (one audience, again and again), and its bytes are compared for less than they cost
    // to check and decode. Handlers only read requests.
    let last: { bytes: Buffer; request: unknown } | undefined;
    out[method] = {
      ...definition,
      requestDeserialize: (bytes: Buffer) => {
        if (last !== undefined && bytes.equals(last.bytes)) return last.request;
        const reason = malformation(bytes, rules);
        if (reason !== undefined) return new MalformedRequest(reason);
        const request = deepFreeze(decode(bytes));
        if (bytes.length <= MAX_REMEMBERED_REQUEST_BYTES) last = { bytes: Buffer.from(bytes), request };
        return request;
      },
    };
  }
  return out as grpc.ServiceDefinition;
}

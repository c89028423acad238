import { inspect } from 'node:util';

/**
 * Wraps a secret value (private key bytes, a token) so that it prints as [redacted] in logs,
 * JSON, util.inspect and string templates. `reveal()` is the only way to the value.
 */
export class Secret<T> {
  readonly #value: T;
  constructor(value: T) {
    this.#value = value;
  }
  reveal(): T {
    return this.#value;
  }
  toString(): string {
    return '[redacted]';
  }
  toJSON(): string {
    return '[redacted]';
  }
  [inspect.custom](): string {
    return 'Secret([redacted])';
  }
}

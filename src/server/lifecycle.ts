import type { Logger } from '../common/logger.js';

/**
 * What the composition root has built so far, to be closed in reverse order: at shutdown, and when
 * a later start-up step fails (so a failed start never leaves a half-running server behind).
 */
export class Lifecycle {
  private readonly parts: { name: string; close: () => unknown }[] = [];

  constructor(private readonly logger: Logger) {}

  /** Registers a built part; returns it for chaining. */
  add<T extends { close(): unknown }>(name: string, part: T): T {
    this.parts.push({ name, close: () => part.close() });
    return part;
  }

  /** Closes everything built, newest first; a failing close is logged and the rest still close. */
  async closeAll(): Promise<void> {
    for (const part of this.parts.splice(0).reverse()) {
      try {
        await part.close();
      } catch (err) {
        this.logger.error({ err, part: part.name }, 'shutdown: closing a part failed');
      }
    }
  }
}

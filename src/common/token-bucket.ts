/**
 * Up to `capacity` tokens (a burst), refilled continuously at `perSecond`; times are the caller's
 * clock (milliseconds), so a test drives it with a fake one.
 */
export class TokenBucket {
  private tokens: number;
  private at: number;

  constructor(
    private readonly perSecond: number,
    now: number,
    private readonly capacity: number = perSecond,
  ) {
    this.tokens = capacity;
    this.at = now;
  }

  take(now: number): boolean {
    if (now > this.at) {
      this.tokens = Math.min(this.capacity, this.tokens + ((now - this.at) * this.perSecond) / 1000);
      this.at = now;
    }
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }

  /** Whether the bucket would be full at `now` (nothing to remember about its owner). */
  full(now: number): boolean {
    return this.tokens + ((now - this.at) * this.perSecond) / 1000 >= this.capacity;
  }
}

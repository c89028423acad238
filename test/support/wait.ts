/**
 * Polls `f` every 100 ms until it gives something other than undefined or false (a thrown error
 * counts as not yet), and returns that; fails after `ms` naming `what`.
 */
export async function waitFor<T>(f: () => T | undefined | false | Promise<T | undefined | false>, ms: number, what: string): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await Promise.resolve().then(f).catch(() => undefined);
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

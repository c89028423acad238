import { chromium, type Browser } from 'playwright-core';

/** Debian's chromium (.ci/run installs it); playwright's own browser downloads are not used. */
export const CHROMIUM = process.env.AGENTID_TEST_CHROMIUM ?? '/usr/bin/chromium';

/**
 * Headless Chromium for browser tests. Playwright gives every launch a fresh temporary profile
 * (its own --user-data-dir), so no state carries over between runs; every context has its own
 * cookie jar, so two contexts are two independent users.
 */
export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

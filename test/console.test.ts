/**
 * The web console end to end: a real server with the console on, the real CLI (`agentid console
 * login`, `agentid run`), and headless Chromium driving the page the way a person would (buttons
 * found by role and accessible name). Screenshots for the README: see SCREENSHOTS.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import https from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { ensureTestUser, type TestUser } from '../src/attest/testing.js';
import { readAuditEvents } from '../src/audit/index.js';
import { startTestServer, type TestServer } from './support/server.js';
import { REPO, cliArgv, runCli } from './support/cli.js';
import { launchChromium } from './support/browser.js';
import { followJsonLines } from './support/json-lines.js';

const td = 'console.example';
/** How long `agentid run` may take to start its workload (two tsx processes; slow on a loaded 2-core CI machine). */
const STARTUP_MS = 90_000;
/** Each test starts CLI processes and a browser context; the default 60 s is too tight under load. */
const TEST_MS = 240_000;
const FETCH_CLIENT = join(import.meta.dirname, 'support', 'fetch-client.ts');
/**
 * Screenshots are always taken; they replace the README's copies in docs/console/ only with
 * AGENTID_UPDATE_SCREENSHOTS=1 (otherwise every test run would leave changed PNGs in the worktree).
 */
const SCREENSHOTS = process.env.AGENTID_UPDATE_SCREENSHOTS === '1' ? join(REPO, 'docs', 'console') : join(tmpdir(), 'agentid-console-screenshots');

/** A raw HTTPS request to the console (the server presents its SVID, which Node's default roots do not know). */
function request(url: string, opts: { method?: string; headers?: Record<string, string>; body?: string } = {}): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }> {
  return new Promise((resolve, reject) => {
    const req = https.request(url, { method: opts.method ?? 'GET', headers: opts.headers, rejectUnauthorized: false }, (res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end(opts.body);
  });
}

describe('web console', () => {
  let t: TestServer;
  let browser: Browser;
  let orchestrator: TestUser;
  let consoleUrl: string;
  const children: ChildProcess[] = [];

  const env = () => ({ AGENTID_ADMIN_SOCKET: t.config.adminSocket, SPIFFE_ENDPOINT_SOCKET: `unix://${t.config.workloadSocket}` });
  const asOrchestrator = (argv: string[]) => ({ command: 'setpriv', args: [`--reuid=${orchestrator.uid}`, `--regid=${orchestrator.gid}`, '--init-groups', '--', ...argv] });

  /** `agentid console login` (as root, or as the orchestrator): its stdout is exactly one line, the link. */
  async function loginLink(as: 'admin' | 'orchestrator' = 'admin'): Promise<string> {
    const r = await runCli(['console', 'login'], { env: env(), ...(as === 'orchestrator' ? { wrap: asOrchestrator } : {}) });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const out = r.stdout.split('\n');
    expect(out).toHaveLength(2);
    expect(out[1]).toBe('');
    expect(out[0]).toMatch(new RegExp(`^${consoleUrl}/login/[A-Za-z0-9_-]{43}$`));
    return out[0]!;
  }

  async function signedInPage(as: 'admin' | 'orchestrator' = 'admin'): Promise<{ context: BrowserContext; page: Page }> {
    const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 720 } });
    context.setDefaultTimeout(60_000);
    const page = await context.newPage();
    await page.goto(await loginLink(as));
    expect(new URL(page.url()).pathname).toBe('/');
    await page.getByRole('navigation', { name: 'Console' }).waitFor();
    return { context, page };
  }

  /** `agentid run` of a workload that follows its X.509 stream and prints one JSON line per update. */
  function runWatcher(agent: string, task: string, wrap?: (argv: string[]) => { command: string; args: string[] }) {
    const argv = cliArgv('run', '--agent', agent, '--task', task, '--meta', 'ticket=SEC-7', '--', process.execPath, '--import', 'tsx', FETCH_CLIENT, t.config.workloadSocket, 'watch');
    const { command, args } = wrap ? wrap(argv) : { command: argv[0]!, args: argv.slice(1) };
    const child = spawn(command, args, { cwd: REPO, env: { ...process.env, ...env() }, stdio: ['ignore', 'pipe', 'inherit'] });
    children.push(child);
    return { child, out: followJsonLines(child) };
  }

  beforeAll(async () => {
    orchestrator = ensureTestUser('agentid-test-orch');
    t = await startTestServer({
      trustDomain: td,
      yaml: [
        'admin:',
        '  admin_uids: [0]',
        '  orchestrators:',
        `    - uid: ${orchestrator.uid}`,
        '      agents: [builder]',
        'console:',
        '  listen: 127.0.0.1:0',
      ].join('\n'),
    });
    consoleUrl = t.server.consoleUrl!;
    browser = await launchChromium();
    mkdirSync(SCREENSHOTS, { recursive: true });
  });
  afterAll(async () => {
    for (const c of children) c.kill('SIGKILL');
    await browser?.close();
    await t?.cleanup();
  });

  it('signs in with a link from `agentid console login`, revokes a running task with its button, and the process loses its identity', async () => {
    const work = runWatcher('coder', 't-42');
    const taskId = `spiffe://${td}/agent/coder/task/t-42`;
    await work.out.next((l) => l.ids?.[0] === taskId, STARTUP_MS);

    const admin = await signedInPage();
    const watcher = await signedInPage();
    const { page } = admin;
    await page.getByRole('heading', { name: 'Overview' }).waitFor();
    await page.getByText('Audit chain verified').waitFor();
    const stat = (label: string) => page.locator('.stat', { hasText: label }).locator('dd').textContent();
    expect(await stat('Active tasks')).toBe('1');
    expect(Number(await stat('SVIDs issued (last hour)'))).toBeGreaterThanOrEqual(1);
    expect(Number(await stat('Open Workload API streams'))).toBeGreaterThanOrEqual(1);
    await page.screenshot({ path: join(SCREENSHOTS, 'overview.png') });

    // A second security engineer keeps the active task list open.
    await watcher.page.goto(`${consoleUrl}/#/tasks`);
    await watcher.page.getByRole('link', { name: 't-42' }).waitFor();

    await page.getByRole('link', { name: 'Tasks' }).click();
    const row = page.getByRole('row').filter({ hasText: 't-42' });
    await row.waitFor();
    expect(await row.textContent()).toContain('pid ');
    await page.screenshot({ path: join(SCREENSHOTS, 'tasks.png') });

    await page.getByRole('link', { name: 't-42' }).click();
    await page.getByRole('heading', { name: 'Task coder/t-42' }).waitFor();
    await page.getByRole('table', { name: /SVIDs issued/ }).getByRole('row').nth(1).waitFor();
    await page.getByText('ticket=SEC-7').waitFor();
    await page.screenshot({ path: join(SCREENSHOTS, 'task.png'), fullPage: true });
    await page.getByRole('link', { name: '← All tasks' }).click();

    await page.getByRole('button', { name: 'Revoke t-42' }).click();
    const dialog = page.getByRole('dialog', { name: 'Revoke task coder/t-42?' });
    await dialog.getByLabel('Reason (recorded in the audit trail)').fill('prompt injection seen in SEC-7');
    await page.screenshot({ path: join(SCREENSHOTS, 'revoke-dialog.png') });
    const clicked = Date.now();
    await dialog.getByRole('button', { name: 'Confirm revoke t-42' }).click();

    // The requirement under test: the task's own process is refused within a second.
    const denied = await work.out.next((l) => l.error !== undefined, 1000);
    expect(denied.error).toBe('permission_denied');
    expect(Date.now() - clicked).toBeLessThan(1000);

    // Gone from the active list, here and for the other viewer, without a reload.
    await page.getByRole('button', { name: 'Revoke t-42' }).waitFor({ state: 'detached', timeout: 15_000 });
    await watcher.page.getByRole('link', { name: 't-42' }).waitFor({ state: 'detached', timeout: 15_000 });

    // The audit view shows the revocation by this console user.
    await page.getByRole('link', { name: 'Audit trail' }).click();
    await page.getByLabel('Task').fill('t-42');
    await page.getByRole('button', { name: 'Filter' }).click();
    const revoked = page.getByRole('row').filter({ hasText: 'task.revoked' });
    await revoked.waitFor();
    expect(await revoked.textContent()).toContain('uid:0 (admin)');
    expect(await revoked.textContent()).toContain('prompt injection seen in SEC-7');
    await page.screenshot({ path: join(SCREENSHOTS, 'audit.png') });

    const events = readAuditEvents(t.config.audit.file, { task: 't-42', type: 'task.revoked' }) as unknown as { by: string; actor: { uid: number }; reason: string }[];
    expect(events).toMatchObject([{ by: 'uid:0 (admin)', actor: { uid: 0 }, reason: 'prompt injection seen in SEC-7' }]);
    expect(readAuditEvents(t.config.audit.file, { type: 'console.signed_in' }).length).toBeGreaterThanOrEqual(2);
    await admin.context.close();
    await watcher.context.close();
  }, TEST_MS);

  it('is keyboard navigable, names every control, and fits a phone screen', async () => {
    const work = runWatcher('coder', 't-45');
    await work.out.next((l) => l.ids?.[0] === `spiffe://${td}/agent/coder/task/t-45`, STARTUP_MS);
    const { context, page } = await signedInPage();

    // Every interactive node in Chromium's accessibility tree has a name, on every page.
    const cdp = await context.newCDPSession(page);
    const INTERACTIVE = new Set(['button', 'link', 'textbox', 'searchbox', 'combobox', 'checkbox', 'radio', 'spinbutton']);
    for (const route of ['overview', 'tasks', 'tasks/coder/t-45', 'revocations', 'entries', 'audit']) {
      await page.goto(`${consoleUrl}/#/${route}`);
      await page.getByRole('heading', { level: 1 }).waitFor();
      await page.waitForLoadState('networkidle');
      const { nodes } = (await cdp.send('Accessibility.getFullAXTree')) as { nodes: { ignored: boolean; role?: { value: string }; name?: { value: string } }[] };
      const controls = nodes.filter((n) => !n.ignored && INTERACTIVE.has(n.role?.value ?? ''));
      expect(controls.length, route).toBeGreaterThan(3);
      expect(controls.filter((n) => !n.name?.value?.trim()).map((n) => n.role?.value), route).toEqual([]);
    }

    // Keyboard only: Tab to the task's Revoke button, Enter opens the confirmation with focus inside, Escape cancels.
    await page.goto(`${consoleUrl}/#/tasks`);
    await page.getByRole('link', { name: 't-45' }).waitFor();
    let reached = false;
    for (let i = 0; i < 40 && !reached; i++) {
      await page.keyboard.press('Tab');
      // (Expressions as strings: this file is type-checked without the DOM library.)
      reached = (await page.evaluate("document.activeElement?.getAttribute('aria-label')")) === 'Revoke t-45';
    }
    expect(reached).toBe(true);
    await page.keyboard.press('Enter');
    const dialog = page.getByRole('dialog', { name: 'Revoke task coder/t-45?' });
    await dialog.waitFor();
    expect(await page.evaluate("document.activeElement?.closest('dialog') !== null")).toBe(true);
    await page.keyboard.press('Escape');
    await dialog.waitFor({ state: 'detached' });
    expect((await t.admin.call('GetTask', { agent: 'coder', id: 't-45' })).state).toBe('active');

    // A phone's width: nothing but the tables' own scroll areas is wider than the screen.
    await page.setViewportSize({ width: 390, height: 844 });
    await page.goto(`${consoleUrl}/#/tasks/coder/t-45`);
    await page.getByRole('heading', { name: 'Task coder/t-45' }).waitFor();
    expect(await page.evaluate('document.documentElement.scrollWidth')).toBeLessThanOrEqual(390);
    await page.screenshot({ path: join(SCREENSHOTS, 'phone-task.png'), fullPage: true });
    await context.close();
  }, TEST_MS);

  it('lets an admin create and delete an entry, filters the audit trail by SPIFFE ID and time, and signs out', async () => {
    const { page } = await signedInPage();
    const id = `spiffe://${td}/svc/reports`;
    await page.getByRole('link', { name: 'Entries' }).click();
    await page.getByLabel('SPIFFE ID').fill(id);
    await page.getByLabel('Selectors (space separated)').fill('unix:uid:4242 unix:gid:4242');
    await page.getByLabel('X.509 TTL (seconds, optional)').fill('600');
    await page.getByRole('button', { name: 'Create entry' }).click();
    await page.getByRole('status').filter({ hasText: `for ${id}` }).waitFor();
    const created = (await t.admin.call('ListEntries', {})).entries.find((e: { spiffe_id: string }) => e.spiffe_id === id);
    expect(created).toMatchObject({ selectors: ['unix:gid:4242', 'unix:uid:4242'], x509_ttl_seconds: 600 });

    // A bad entry changes nothing and says why.
    await page.getByLabel('SPIFFE ID').fill('spiffe://other.example/x');
    await page.getByLabel('Selectors (space separated)').fill('unix:uid:1');
    await page.getByRole('button', { name: 'Create entry' }).click();
    await page.getByRole('alert').filter({ hasText: 'trust domain' }).waitFor();

    await page.getByRole('button', { name: `Delete entry ${id} (${created.id})` }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Confirm delete' }).click();
    await page.getByRole('button', { name: `Delete entry ${id} (${created.id})` }).waitFor({ state: 'detached' });
    expect((await t.admin.call('ListEntries', {})).entries.map((e: { spiffe_id: string }) => e.spiffe_id)).not.toContain(id);

    const audit = (query: string) =>
      page.evaluate((q) => fetch(`/api/audit?${q}`).then((r) => r.json()), query) as Promise<{ records: { type: string; spiffe_id?: string; by?: string }[]; chain: { ok: boolean } }>;
    const byId = await audit(`spiffeId=${encodeURIComponent(id)}`);
    expect(byId.chain.ok).toBe(true);
    expect(byId.records.map((r) => r.type)).toEqual(['revocation.added', 'entry.deleted', 'entry.created']);
    expect(byId.records.every((r) => r.spiffe_id === id)).toBe(true);
    expect(byId.records.find((r) => r.type === 'entry.created')?.by).toBe('uid:0 (admin)');
    const future = new Date(Date.now() + 3_600_000).toISOString();
    expect((await audit(`spiffeId=${encodeURIComponent(id)}&since=${future}`)).records).toEqual([]);
    expect((await audit(`spiffeId=${encodeURIComponent(id)}&until=${future}`)).records).toHaveLength(3);

    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByText('You are not signed in.').waitFor();
    expect(await page.evaluate(() => fetch('/api/overview').then((r) => r.status))).toBe(401);
    await page.context().close();
  }, TEST_MS);

  it('a sign-in link works once; the session cookie is HttpOnly, Secure, SameSite=Strict and expiring; pages carry a CSP without inline scripts', async () => {
    const link = await loginLink();
    const first = await request(link);
    expect(first.status).toBe(303);
    const cookie = String(first.headers['set-cookie']);
    expect(cookie).toMatch(/^__Host-agentid-session=[A-Za-z0-9_-]{43}; Path=\/; Secure; HttpOnly; SameSite=Strict; Max-Age=\d+$/);
    const again = await request(link);
    expect(again.status).toBe(401);
    expect(again.headers['set-cookie']).toBeUndefined();

    const index = await request(`${consoleUrl}/`);
    const csp = String(index.headers['content-security-policy']);
    expect(csp).toContain("script-src 'self'");
    expect(csp).not.toContain('unsafe-inline');
    expect(csp).toContain("frame-ancestors 'none'");
    expect(index.body).not.toMatch(/<script>|<script[^>]*>[^<]/);
  }, TEST_MS);

  it('refuses forged state changes: no session, no CSRF token, or a foreign Origin', async () => {
    const work = runWatcher('coder', 't-43');
    await work.out.next((l) => l.ids?.[0] === `spiffe://${td}/agent/coder/task/t-43`, STARTUP_MS);
    const revokeUrl = `${consoleUrl}/api/tasks/coder/t-43/revoke`;
    const body = JSON.stringify({ reason: 'forged' });

    const anonymous = await request(revokeUrl, { method: 'POST', headers: { 'Content-Type': 'application/json', Origin: consoleUrl }, body });
    expect(anonymous.status).toBe(401);

    const { context, page } = await signedInPage();
    const cookie = (await context.cookies()).find((c) => c.name === '__Host-agentid-session')!;
    expect(cookie).toMatchObject({ httpOnly: true, secure: true, sameSite: 'Strict' });
    const session = (await page.evaluate(() => fetch('/api/session').then((r) => r.json()))) as { csrfToken: string };
    // From the console's own page but without the token, as a script injected elsewhere would.
    const noToken = await page.evaluate(
      (u) => fetch(u, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{"reason":"forged"}' }).then((r) => r.status),
      '/api/tasks/coder/t-43/revoke',
    );
    expect(noToken).toBe(403);
    const headers = { 'Content-Type': 'application/json', Cookie: `${cookie.name}=${cookie.value}`, 'X-CSRF-Token': session.csrfToken };
    const foreign = await request(revokeUrl, { method: 'POST', headers: { ...headers, Origin: 'https://evil.example' }, body });
    expect(foreign.status).toBe(403);
    const noOrigin = await request(revokeUrl, { method: 'POST', headers, body });
    expect(noOrigin.status).toBe(403);
    const wrongToken = await request(revokeUrl, { method: 'POST', headers: { ...headers, Origin: consoleUrl, 'X-CSRF-Token': 'x'.repeat(43) }, body });
    expect(wrongToken.status).toBe(403);

    expect((await t.admin.call('GetTask', { agent: 'coder', id: 't-43' })).state).toBe('active');
    expect(work.out.lines.some((l) => l.error)).toBe(false);
    await context.close();
  }, TEST_MS);

  it('an orchestrator\'s session sees only its agents\' tasks and cannot see or revoke another agent\'s task', async () => {
    // Another agent's task (started by root), and the orchestrator's own builder task.
    const other = runWatcher('coder', 't-44');
    const own = runWatcher('builder', 'b-7', asOrchestrator);
    await other.out.next((l) => l.ids?.[0] === `spiffe://${td}/agent/coder/task/t-44`, STARTUP_MS);
    await own.out.next((l) => l.ids?.[0] === `spiffe://${td}/agent/builder/task/b-7`, STARTUP_MS);

    const { context, page } = await signedInPage('orchestrator');
    await page.getByText(`uid:${orchestrator.uid} (orchestrator)`).waitFor();
    expect(await page.getByRole('link', { name: 'Entries' }).count()).toBe(0);
    await page.getByRole('link', { name: 'Tasks' }).click();
    await page.getByRole('link', { name: 'b-7' }).waitFor();
    expect(await page.getByRole('link', { name: 't-44' }).count()).toBe(0);

    const session = (await page.evaluate(() => fetch('/api/session').then((r) => r.json()))) as { csrfToken: string };
    const call = (path: string, method = 'GET') =>
      page.evaluate(
        ([p, m, token]) =>
          fetch(p!, { method: m, headers: m === 'GET' ? {} : { 'Content-Type': 'application/json', 'X-CSRF-Token': token! }, ...(m === 'GET' ? {} : { body: '{"reason":"not mine"}' }) }).then(async (r) => ({ status: r.status, body: (await r.json()) as { records?: unknown[] } })),
        [path, method, session.csrfToken],
      );
    // Another agent's task looks missing, exactly as on the admin API (existence is not disclosed).
    expect((await call('/api/tasks/coder/t-44')).status).toBe(404);
    expect((await call('/api/tasks/coder/t-44/revoke', 'POST')).status).toBe(403);
    expect((await call('/api/entries')).status).toBe(403);
    expect((await call('/api/audit?task=t-44')).body.records).toEqual([]);
    expect(((await call('/api/audit?task=b-7')).body.records ?? []).length).toBeGreaterThan(0);
    expect((await t.admin.call('GetTask', { agent: 'coder', id: 't-44' })).state).toBe('active');
    expect(other.out.lines.some((l) => l.error)).toBe(false);

    const denied = readAuditEvents(t.config.audit.file, { type: 'admin.denied' }) as unknown as { who: string; action: string }[];
    const mine = denied.filter((d) => d.who === `uid:${orchestrator.uid} (orchestrator)`).map((d) => d.action);
    expect(mine).toEqual(expect.arrayContaining(['task.show', 'task.revoke', 'console.entries']));
    await context.close();
  }, TEST_MS);
});

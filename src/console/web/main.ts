/*
 * The agentid web console (browser side): Preact components written with htm tagged templates,
 * bundled by esbuild into one script (src/console/assets.generated.ts). No inline scripts or
 * styles, so the server's Content-Security-Policy can forbid them. Routing is by URL fragment
 * (#/tasks/agent/id), so every page is bookmarkable and the back button works.
 */
import { h, render, type ComponentChildren } from 'preact';
import { useCallback, useEffect, useRef, useState } from 'preact/hooks';
import htm from 'htm';

const html = htm.bind(h);

interface Session {
  user: string;
  role: 'admin' | 'orchestrator';
  agents: string[];
  csrfToken: string;
  expiresAt: number;
}

interface Svid {
  kind: 'x509' | 'jwt';
  serial: string;
  issuedAt: number;
  notAfter: number;
  live: boolean;
}

interface Task {
  agent: string;
  id: string;
  spiffeId: string;
  state: string;
  binding: string;
  createdAt: number;
  expiresAt: number;
  endedAt: number | null;
  endReason: string | null;
  createdBy: string;
  metadata: Record<string, string>;
  lastSvid: Svid | null;
}

type AuditRecord = Record<string, unknown> & { seq: number; time: string; type: string };
type Chain = ({ ok: true; count: number } | { ok: false; line: number; reason: string }) & { checkedAt: number };

class ApiError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

let csrfToken = '';

async function api<T>(path: string, init: { method?: string; body?: unknown } = {}): Promise<T> {
  const headers: Record<string, string> = {};
  if (init.method && init.method !== 'GET') {
    headers['X-CSRF-Token'] = csrfToken;
    if (init.body !== undefined) headers['Content-Type'] = 'application/json';
  }
  const res = await fetch(path, {
    method: init.method ?? 'GET',
    headers,
    credentials: 'same-origin',
    ...(init.body !== undefined ? { body: JSON.stringify(init.body) } : {}),
  });
  const body = (await res.json().catch(() => ({}))) as { error?: string };
  if (!res.ok) throw new ApiError(res.status, body.error ?? `request failed (${res.status})`);
  return body as T;
}

// ---- formatting -------------------------------------------------------------------------------

const pad = (n: number) => String(n).padStart(2, '0');
function when(ms: number | null | undefined): string {
  if (!ms) return '-';
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}
function duration(seconds: number): string {
  if (seconds <= 0) return 'expired';
  const d = Math.floor(seconds / 86400);
  const hrs = Math.floor((seconds % 86400) / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  if (d > 0) return `${d}d ${hrs}h`;
  if (hrs > 0) return `${hrs}h ${m}m`;
  return m > 0 ? `${m}m ${seconds % 60}s` : `${seconds}s`;
}
const shortSerial = (s: string) => (s.length > 16 ? `${s.slice(0, 16)}…` : s);
const taskHref = (t: { agent: string; id: string }) => `#/tasks/${encodeURIComponent(t.agent)}/${encodeURIComponent(t.id)}`;

// ---- live updates -----------------------------------------------------------------------------

type Topic = 'tasks' | 'revocations' | 'entries' | 'audit';
const LIVE_RELOAD_MS = 1000;
const listeners = new Set<(topics: Topic[]) => void>();
function connectEvents(): void {
  const source = new EventSource('/api/events');
  source.addEventListener('change', (e) => {
    const { topics } = JSON.parse((e as MessageEvent<string>).data) as { topics: Topic[] };
    for (const l of listeners) l(topics);
  });
}

/** Fetches `load` now, again whenever one of `topics` changes on the server, and when `deps` change. */
function useLive<T>(load: () => Promise<T>, topics: Topic[], deps: unknown[]): { data: T | undefined; error: string | undefined; reload: () => void } {
  const [data, setData] = useState<T | undefined>(undefined);
  const [error, setError] = useState<string | undefined>(undefined);
  const [tick, setTick] = useState(0);
  const reload = useCallback(() => setTick((n) => n + 1), []);
  useEffect(() => {
    // Live changes reload at most once per LIVE_RELOAD_MS: a busy server (every issuance is a
    // change) costs each open page one request per interval, not one per event.
    let last = 0;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const l = (changed: Topic[]) => {
      if (!changed.some((t) => topics.includes(t)) || timer) return;
      const wait = Math.max(0, last + LIVE_RELOAD_MS - Date.now());
      timer = setTimeout(() => {
        timer = undefined;
        last = Date.now();
        reload();
      }, wait);
    };
    listeners.add(l);
    return () => {
      listeners.delete(l);
      if (timer) clearTimeout(timer);
    };
  }, []);
  useEffect(() => {
    let current = true;
    load().then(
      (d) => current && (setData(d), setError(undefined)),
      (e: Error) => current && setError(e.message),
    );
    return () => {
      current = false;
    };
  }, [tick, ...deps]);
  return { data, error, reload };
}

function useRoute(): string[] {
  const parse = () => location.hash.replace(/^#\/?/, '').split('/').filter(Boolean).map(decodeURIComponent);
  const [route, setRoute] = useState(parse);
  useEffect(() => {
    const on = () => setRoute(parse());
    addEventListener('hashchange', on);
    return () => removeEventListener('hashchange', on);
  }, []);
  return route;
}

// ---- shared pieces ----------------------------------------------------------------------------

function Status({ message, kind = 'info' }: { message: string | undefined; kind?: 'info' | 'error' }) {
  return html`<p class=${`status ${kind}`} role=${kind === 'error' ? 'alert' : 'status'}>${message ?? ''}</p>`;
}

function StateBadge({ state }: { state: string }) {
  return html`<span class=${`badge state-${state}`}>${state}</span>`;
}

/** A modal confirmation (native <dialog>: focus moves in, Escape cancels, focus returns after). */
function ConfirmDialog(props: {
  title: string;
  confirmLabel: string;
  reasonLabel?: string;
  onConfirm: (reason: string) => Promise<void>;
  onClose: () => void;
  children?: ComponentChildren;
}) {
  const ref = useRef<HTMLDialogElement>(null);
  const [reason, setReason] = useState('');
  const [error, setError] = useState<string | undefined>(undefined);
  const [busy, setBusy] = useState(false);
  useEffect(() => {
    ref.current?.showModal();
  }, []);
  const submit = async (e: Event) => {
    e.preventDefault();
    if (props.reasonLabel && !reason.trim()) {
      setError('A reason is required.');
      return;
    }
    setBusy(true);
    try {
      await props.onConfirm(reason.trim());
      ref.current?.close();
    } catch (err) {
      setError((err as Error).message);
      setBusy(false);
    }
  };
  const titleId = 'dialog-title';
  return html`<dialog ref=${ref} aria-labelledby=${titleId} onClose=${props.onClose}>
    <form onSubmit=${submit}>
      <h2 id=${titleId}>${props.title}</h2>
      ${props.children}
      ${props.reasonLabel &&
      html`<label for="confirm-reason">${props.reasonLabel}</label>
        <textarea id="confirm-reason" required rows="3" value=${reason} onInput=${(e: Event) => setReason((e.target as HTMLTextAreaElement).value)}></textarea>`}
      <${Status} message=${error} kind="error" />
      <div class="actions">
        <button type="button" onClick=${() => ref.current?.close()}>Cancel</button>
        <button type="submit" class="danger" disabled=${busy}>${props.confirmLabel}</button>
      </div>
    </form>
  </dialog>`;
}

function RevokeButton({ task, onDone }: { task: Task; onDone?: () => void }) {
  const [open, setOpen] = useState(false);
  return html`<button type="button" class="danger" aria-label=${`Revoke ${task.id}`} onClick=${() => setOpen(true)}>Revoke</button>
    ${open &&
    html`<${ConfirmDialog}
      title=${`Revoke task ${task.agent}/${task.id}?`}
      confirmLabel=${`Confirm revoke ${task.id}`}
      reasonLabel="Reason (recorded in the audit trail)"
      onConfirm=${async (reason: string) => {
        await api(`/api/tasks/${encodeURIComponent(task.agent)}/${encodeURIComponent(task.id)}/revoke`, { method: 'POST', body: { reason } });
        onDone?.();
      }}
      onClose=${() => setOpen(false)}
    >
      <p>The task's process loses its identity at once: its open Workload API streams are refused and its certificates are listed in the CRLs. This cannot be undone.</p>
      <p class="mono">${task.spiffeId}</p>
    <//>`}`;
}

// ---- pages ------------------------------------------------------------------------------------

interface Overview {
  activeTasks: number;
  openStreams: number | null;
  lastHour: { issued: number; refused: number | null };
  keys: { kind: string; id: string; slot: string; notAfter: number; secondsLeft: number }[];
  auditChain: Chain;
}

function ChainStatus({ chain }: { chain: Chain | undefined }) {
  if (!chain) return null;
  return chain.ok
    ? html`<p class="chain ok" role="status">Audit chain verified: ${chain.count} records, no edits, gaps or reordering (checked ${when(chain.checkedAt)}).</p>`
    : html`<p class="chain broken" role="alert">Audit chain BROKEN at line ${chain.line}: ${chain.reason} (checked ${when(chain.checkedAt)})</p>`;
}

function OverviewPage() {
  const { data, error } = useLive(() => api<Overview>('/api/overview'), ['tasks', 'audit'], []);
  const stat = (label: string, value: number | null, href?: string) =>
    html`<div class="stat">
      <dt>${label}</dt>
      <dd>${value === null ? html`<span title="admins only">-</span>` : href ? html`<a href=${href}>${value}</a>` : value}</dd>
    </div>`;
  return html`<section aria-labelledby="overview-title">
    <h1 id="overview-title">Overview</h1>
    <${Status} message=${error} kind="error" />
    ${data &&
    html`<dl class="stats">
        ${stat('Active tasks', data.activeTasks, '#/tasks')} ${stat('Open Workload API streams', data.openStreams)}
        ${stat('SVIDs issued (last hour)', data.lastHour.issued)} ${stat('Refusals (last hour)', data.lastHour.refused)}
      </dl>
      <${ChainStatus} chain=${data.auditChain} />
      <div class="table-wrap">
        <table>
          <caption>CA and JWT key slots</caption>
          <thead><tr><th scope="col">Key</th><th scope="col">ID</th><th scope="col">Slot</th><th scope="col">Expires</th><th scope="col">Time left</th></tr></thead>
          <tbody>
            ${data.keys.map(
              (k) => html`<tr key=${k.kind + k.id}>
                <td>${k.kind}</td><td class="mono">${k.id}</td><td><span class=${`badge slot-${k.slot}`}>${k.slot}</span></td>
                <td>${when(k.notAfter)}</td><td>${duration(k.secondsLeft)}</td>
              </tr>`,
            )}
          </tbody>
        </table>
      </div>`}
  </section>`;
}

function TasksPage({ session }: { session: Session }) {
  const [state, setState] = useState('active');
  const [search, setSearch] = useState('');
  const { data, error, reload } = useLive(
    () => api<{ tasks: Task[] }>(`/api/tasks${state === 'all' ? '' : `?state=${state}`}`),
    ['tasks'],
    [state],
  );
  const q = search.trim().toLowerCase();
  const tasks = (data?.tasks ?? []).filter(
    (t) => !q || [t.agent, t.id, t.spiffeId, t.binding, t.createdBy, ...Object.values(t.metadata)].some((v) => v.toLowerCase().includes(q)),
  );
  return html`<section aria-labelledby="tasks-title">
    <h1 id="tasks-title">Tasks</h1>
    <div class="filters" role="search">
      <label>State
        <select value=${state} onChange=${(e: Event) => setState((e.target as HTMLSelectElement).value)}>
          ${['active', 'all', 'ended', 'revoked', 'expired'].map((s) => html`<option value=${s}>${s}</option>`)}
        </select>
      </label>
      <label>Search
        <input type="search" value=${search} placeholder="agent, task, SPIFFE ID, pid…" onInput=${(e: Event) => setSearch((e.target as HTMLInputElement).value)} />
      </label>
    </div>
    <${Status} message=${error} kind="error" />
    <div class="table-wrap">
      <table>
        <caption>${tasks.length} ${state === 'all' ? '' : state} task${tasks.length === 1 ? '' : 's'}</caption>
        <thead><tr>
          <th scope="col">Agent</th><th scope="col">Task</th><th scope="col">State</th><th scope="col">Bound to</th>
          <th scope="col">Started</th><th scope="col">Expires</th><th scope="col">Last SVID</th><th scope="col"><span class="sr-only">Actions</span></th>
        </tr></thead>
        <tbody>
          ${tasks.map(
            (t) => html`<tr key=${`${t.agent}/${t.id}`}>
              <td>${t.agent}</td>
              <td><a href=${taskHref(t)}>${t.id}</a></td>
              <td><${StateBadge} state=${t.state} /></td>
              <td>${t.binding}</td>
              <td>${when(t.createdAt)}</td>
              <td>${when(t.expiresAt)}</td>
              <td>${t.lastSvid ? html`<span class="mono">${t.lastSvid.kind} ${shortSerial(t.lastSvid.serial)}</span><br /><small>${when(t.lastSvid.issuedAt)}</small>` : '-'}</td>
              <td>${t.state === 'active' && session.role === 'admin' ? html`<${RevokeButton} task=${t} onDone=${reload} />` : null}</td>
            </tr>`,
          )}
        </tbody>
      </table>
    </div>
  </section>`;
}

function AuditTable({ records, caption }: { records: AuditRecord[]; caption: string }) {
  // Admin actions name their actor; issuance and refused attestation name the workload process.
  const who = (r: AuditRecord) =>
    String(r.by ?? r.who ?? (r.pid !== undefined ? `workload pid ${r.pid}, uid ${r.uid}` : r.actor ? JSON.stringify(r.actor) : '-'));
  const subject = (r: AuditRecord) => String(r.spiffe_id ?? (r.agent ? `${r.agent}/${r.task}` : (r.entry_id ?? r.key_id ?? '-')));
  const details = (r: AuditRecord) =>
    [r.reason, r.action, r.serial ? `serial ${shortSerial(String(r.serial))}` : undefined, r.method ? `via ${r.method}` : undefined].filter(Boolean).join(' · ');
  return html`<div class="table-wrap">
    <table>
      <caption>${caption}</caption>
      <thead><tr><th scope="col">Time</th><th scope="col">#</th><th scope="col">Event</th><th scope="col">Outcome</th><th scope="col">By</th><th scope="col">Subject</th><th scope="col">Details</th></tr></thead>
      <tbody>
        ${records.map(
          (r) => html`<tr key=${r.seq} class=${r.outcome === 'denied' ? 'denied' : ''}>
            <td class="nowrap">${when(Date.parse(r.time))}</td><td>${r.seq}</td><td class="mono nowrap">${r.type}</td><td>${String(r.outcome ?? '')}</td>
            <td>${who(r)}</td><td class="mono">${subject(r)}</td><td>${details(r)}</td>
          </tr>`,
        )}
      </tbody>
    </table>
  </div>`;
}

function TaskPage({ agent, id, session }: { agent: string; id: string; session: Session }) {
  const { data, error, reload } = useLive(
    () => api<{ task: Task; svids: Svid[]; timeline: AuditRecord[] }>(`/api/tasks/${encodeURIComponent(agent)}/${encodeURIComponent(id)}`),
    ['tasks', 'audit'],
    [agent, id],
  );
  const t = data?.task;
  return html`<section aria-labelledby="task-title">
    <p><a href="#/tasks">← All tasks</a></p>
    <h1 id="task-title">Task ${agent}/${id}</h1>
    <${Status} message=${error} kind="error" />
    ${t &&
    html`<div class="task-head">
        <${StateBadge} state=${t.state} />
        ${t.state === 'active' && session.role === 'admin' ? html`<${RevokeButton} task=${t} onDone=${reload} />` : null}
      </div>
      <dl class="details">
        <dt>SPIFFE ID</dt><dd class="mono">${t.spiffeId}</dd>
        <dt>Bound to</dt><dd>${t.binding}</dd>
        <dt>Started</dt><dd>${when(t.createdAt)} by ${t.createdBy}</dd>
        <dt>Expires</dt><dd>${when(t.expiresAt)}</dd>
        ${t.endedAt ? html`<dt>Ended</dt><dd>${when(t.endedAt)}${t.endReason ? ` (${t.endReason})` : ''}</dd>` : null}
        <dt>Metadata</dt><dd>${Object.keys(t.metadata).length === 0 ? '-' : Object.entries(t.metadata).map(([k, v]) => html`<span class="tag">${k}=${v}</span> `)}</dd>
      </dl>
      <div class="table-wrap">
        <table>
          <caption>SVIDs issued (${data!.svids.length})</caption>
          <thead><tr><th scope="col">Kind</th><th scope="col">Serial / JWT ID</th><th scope="col">Issued</th><th scope="col">Expires</th><th scope="col">Live</th></tr></thead>
          <tbody>
            ${data!.svids.map(
              (s) => html`<tr key=${s.serial}><td>${s.kind}</td><td class="mono">${s.serial}</td><td>${when(s.issuedAt)}</td><td>${when(s.notAfter)}</td><td>${s.live ? 'yes' : 'no'}</td></tr>`,
            )}
          </tbody>
        </table>
      </div>
      <${AuditTable} records=${data!.timeline} caption="Audit timeline (newest first)" />`}
  </section>`;
}

function RevocationsPage() {
  const { data, error } = useLive(
    () => api<{ revocations: { spiffeId: string; reason: string; revokedAt: number; revokedBy: string; keepUntil: number }[] }>('/api/revocations'),
    ['revocations'],
    [],
  );
  return html`<section aria-labelledby="rev-title">
    <h1 id="rev-title">Revocations</h1>
    <${Status} message=${error} kind="error" />
    <div class="table-wrap">
      <table>
        <caption>Revoked SPIFFE IDs (${data?.revocations.length ?? 0})</caption>
        <thead><tr><th scope="col">SPIFFE ID</th><th scope="col">Revoked</th><th scope="col">By</th><th scope="col">Reason</th><th scope="col">Listed until</th></tr></thead>
        <tbody>
          ${(data?.revocations ?? [])
            .slice()
            .sort((a, b) => b.revokedAt - a.revokedAt)
            .map((r) => html`<tr key=${r.spiffeId}><td class="mono">${r.spiffeId}</td><td>${when(r.revokedAt)}</td><td>${r.revokedBy}</td><td>${r.reason}</td><td>${when(r.keepUntil)}</td></tr>`)}
        </tbody>
      </table>
    </div>
  </section>`;
}

interface Entry {
  id: string;
  spiffeId: string;
  selectors: string[];
  x509TtlMs: number | null;
  jwtTtlMs: number | null;
  hint: string;
  revision: number;
}

function EntriesPage() {
  const { data, error, reload } = useLive(() => api<{ entries: Entry[] }>('/api/entries'), ['entries'], []);
  const [form, setForm] = useState({ spiffeId: '', selectors: '', x509: '', jwt: '', hint: '' });
  const [message, setMessage] = useState<{ text: string; kind: 'info' | 'error' } | undefined>(undefined);
  const [deleting, setDeleting] = useState<Entry | undefined>(undefined);
  const field = (name: keyof typeof form) => (e: Event) => setForm({ ...form, [name]: (e.target as HTMLInputElement).value });
  const create = async (e: Event) => {
    e.preventDefault();
    const seconds = (v: string) => (v.trim() === '' ? undefined : Number(v));
    try {
      const { entry } = await api<{ entry: Entry }>('/api/entries', {
        method: 'POST',
        body: {
          spiffeId: form.spiffeId.trim(),
          selectors: form.selectors.split(/[\s,]+/).filter(Boolean),
          x509TtlSeconds: seconds(form.x509),
          jwtTtlSeconds: seconds(form.jwt),
          hint: form.hint.trim(),
        },
      });
      setMessage({ text: `Created entry ${entry.id} for ${entry.spiffeId}.`, kind: 'info' });
      setForm({ spiffeId: '', selectors: '', x509: '', jwt: '', hint: '' });
      reload();
    } catch (err) {
      setMessage({ text: (err as Error).message, kind: 'error' });
    }
  };
  return html`<section aria-labelledby="entries-title">
    <h1 id="entries-title">Registration entries</h1>
    <${Status} message=${error} kind="error" />
    <div class="table-wrap">
      <table>
        <caption>${data?.entries.length ?? 0} entries</caption>
        <thead><tr><th scope="col">SPIFFE ID</th><th scope="col">Selectors</th><th scope="col">X.509 TTL</th><th scope="col">JWT TTL</th><th scope="col">ID</th><th scope="col"><span class="sr-only">Actions</span></th></tr></thead>
        <tbody>
          ${(data?.entries ?? []).map(
            (e) => html`<tr key=${e.id}>
              <td class="mono">${e.spiffeId}</td><td class="mono">${e.selectors.join(' ')}</td>
              <td>${e.x509TtlMs ? duration(e.x509TtlMs / 1000) : 'default'}</td><td>${e.jwtTtlMs ? duration(e.jwtTtlMs / 1000) : 'default'}</td>
              <td class="mono">${e.id}</td>
              <td><button type="button" class="danger" aria-label=${`Delete entry ${e.spiffeId} (${e.id})`} onClick=${() => setDeleting(e)}>Delete</button></td>
            </tr>`,
          )}
        </tbody>
      </table>
    </div>
    ${deleting &&
    html`<${ConfirmDialog}
      title=${`Delete entry for ${deleting.spiffeId}?`}
      confirmLabel="Confirm delete"
      onConfirm=${async () => {
        await api(`/api/entries/${encodeURIComponent(deleting.id)}`, { method: 'DELETE' });
        setMessage({ text: `Deleted entry ${deleting.id}.`, kind: 'info' });
        reload();
      }}
      onClose=${() => setDeleting(undefined)}
    >
      <p>Workloads matching it stop receiving this identity; the SPIFFE ID is revoked unless another entry still issues it.</p>
    <//>`}
    <h2>Create an entry</h2>
    <form class="entry-form" onSubmit=${create}>
      <label>SPIFFE ID <input required value=${form.spiffeId} onInput=${field('spiffeId')} placeholder="spiffe://example.org/service" /></label>
      <label>Selectors (space separated) <input required value=${form.selectors} onInput=${field('selectors')} placeholder="unix:uid:1000" /></label>
      <label>X.509 TTL (seconds, optional) <input inputmode="numeric" value=${form.x509} onInput=${field('x509')} /></label>
      <label>JWT TTL (seconds, optional) <input inputmode="numeric" value=${form.jwt} onInput=${field('jwt')} /></label>
      <label>Hint (optional) <input value=${form.hint} onInput=${field('hint')} /></label>
      <button type="submit">Create entry</button>
    </form>
    <${Status} message=${message?.text} kind=${message?.kind ?? 'info'} />
  </section>`;
}

function AuditPage() {
  const [filters, setFilters] = useState({ task: '', spiffeId: '', type: '', since: '', until: '' });
  const [applied, setApplied] = useState(filters);
  // datetime-local inputs hold local time; the server takes ISO-8601 with a zone.
  const iso = (v: string) => (v ? new Date(v).toISOString() : '');
  const params = { ...applied, since: iso(applied.since), until: iso(applied.until) };
  const query = new URLSearchParams(Object.entries(params).filter(([, v]) => v.trim() !== '')).toString();
  const { data, error } = useLive(() => api<{ records: AuditRecord[]; chain: Chain; limit: number }>(`/api/audit?${query}`), ['audit'], [query]);
  const field = (name: keyof typeof filters) => (e: Event) => setFilters({ ...filters, [name]: (e.target as HTMLInputElement).value });
  return html`<section aria-labelledby="audit-title">
    <h1 id="audit-title">Audit trail</h1>
    <${ChainStatus} chain=${data?.chain} />
    <form class="filters" role="search" onSubmit=${(e: Event) => (e.preventDefault(), setApplied(filters))}>
      <label>Task <input value=${filters.task} onInput=${field('task')} /></label>
      <label>SPIFFE ID <input value=${filters.spiffeId} onInput=${field('spiffeId')} /></label>
      <label>Event type <input value=${filters.type} onInput=${field('type')} placeholder="task.revoked" /></label>
      <label>From <input type="datetime-local" value=${filters.since} onInput=${field('since')} /></label>
      <label>To <input type="datetime-local" value=${filters.until} onInput=${field('until')} /></label>
      <button type="submit">Filter</button>
    </form>
    <${Status} message=${error} kind="error" />
    ${data && html`<${AuditTable} records=${data.records} caption=${`${data.records.length} records, newest first (at most ${data.limit})`} />`}
  </section>`;
}

// ---- shell ------------------------------------------------------------------------------------

function SignIn({ message }: { message: string }) {
  return html`<main id="main" class="signin">
    <h1>agentid console</h1>
    <p>${message}</p>
    <p>Sign in from a shell on the server as an admin or orchestrator:</p>
    <pre><code>agentid console login</code></pre>
    <p>and open the link it prints within a minute. A client certificate with an admin role signs you in too.</p>
  </main>`;
}

function App() {
  const [session, setSession] = useState<Session | undefined>(undefined);
  const [failure, setFailure] = useState<string | undefined>(undefined);
  const route = useRoute();
  useEffect(() => {
    api<Session>('/api/session').then(
      (s) => {
        csrfToken = s.csrfToken;
        setSession(s);
        connectEvents();
      },
      (e: Error) => setFailure(e instanceof ApiError && e.status === 401 ? 'You are not signed in.' : e.message),
    );
  }, []);
  if (!session) return failure ? html`<${SignIn} message=${failure} />` : html`<main id="main"><p role="status">Loading…</p></main>`;

  const page = route[0] ?? 'overview';
  const links: [string, string][] = [['overview', 'Overview'], ['tasks', 'Tasks']];
  if (session.role === 'admin') links.push(['revocations', 'Revocations'], ['entries', 'Entries']);
  links.push(['audit', 'Audit trail']);
  const signOut = async () => {
    await api('/api/logout', { method: 'POST' });
    location.hash = '';
    location.reload();
  };
  let body;
  if (page === 'tasks' && route.length === 3) body = html`<${TaskPage} agent=${route[1]} id=${route[2]} session=${session} />`;
  else if (page === 'tasks') body = html`<${TasksPage} session=${session} />`;
  else if (page === 'revocations') body = html`<${RevocationsPage} />`;
  else if (page === 'entries') body = html`<${EntriesPage} />`;
  else if (page === 'audit') body = html`<${AuditPage} />`;
  else body = html`<${OverviewPage} />`;
  return html`<a class="skip" href="#main" onClick=${(e: Event) => (e.preventDefault(), document.getElementById('main')?.focus())}>Skip to content</a>
    <header>
      <span class="brand">agentid</span>
      <nav aria-label="Console">
        <ul>
          ${links.map(([id, label]) => html`<li><a href=${`#/${id}`} aria-current=${page === id ? 'page' : undefined}>${label}</a></li>`)}
        </ul>
      </nav>
      <span class="user">${session.user}${session.role === 'orchestrator' ? ` · agents: ${session.agents.join(', ')}` : ''}</span>
      <button type="button" onClick=${signOut}>Sign out</button>
    </header>
    <main id="main" tabindex="-1">${body}</main>`;
}

render(h(App, null), document.getElementById('app')!);

/*
 * Top functions of a V8 CPU profile (node --cpu-prof): by self time, then the project's own (src/)
 * functions by inclusive time, each with its share of the busy (non-idle) time:
 *
 *   node --import tsx bench/profile-summary.ts PROFILE.cpuprofile [--top 25]
 *       [--marks DIR/marks.json --only LABEL_PREFIX [--per-window]]
 *
 * With --marks (written by the bench beside the profiles), only samples inside the windows whose
 * label starts with LABEL_PREFIX count ("revoke", "task-rate-a", "update-all"); --per-window also
 * prints each window's busy time and its top functions (what one slow RevokeTask call did).
 *
 * `npm run bench -- --cpu-prof DIR` writes one profile per agentid server process into DIR.
 */
import { readFileSync } from 'node:fs';
import { relative } from 'node:path';
import { fileURLToPath } from 'node:url';

interface ProfileNode {
  id: number;
  children?: number[];
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
}
interface Profile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface FunctionTime {
  name: string;
  where: string;
  selfMs: number;
  share: number;
}

/** Self time per function (same name and location merged), largest first; shares are of the busy (non-idle) time. */
export function topFunctions(profile: Profile, repoRoot: string): { totalMs: number; idleMs: number; functions: FunctionTime[] } {
  const byNode = new Map(profile.nodes.map((n) => [n.id, n]));
  const selfUs = new Map<number, number>();
  profile.samples.forEach((id, i) => selfUs.set(id, (selfUs.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0)));
  const merged = new Map<string, FunctionTime>();
  let totalUs = 0;
  let idleUs = 0;
  for (const [id, us] of selfUs) {
    const f = byNode.get(id)!.callFrame;
    if (f.functionName === '(idle)') {
      idleUs += us;
      continue;
    }
    totalUs += us;
    let where = f.url;
    if (where.startsWith('file://')) where = sourceName(relative(repoRoot, fileURLToPath(where)));
    where = where ? `${where}:${f.lineNumber + 1}` : '';
    const name = f.functionName || '(anonymous)';
    const key = `${name} ${where}`;
    const entry = merged.get(key) ?? { name, where, selfMs: 0, share: 0 };
    entry.selfMs += us / 1000;
    merged.set(key, entry);
  }
  const functions = [...merged.values()].sort((a, b) => b.selfMs - a.selfMs);
  for (const f of functions) f.share = totalUs > 0 ? (f.selfMs * 1000) / totalUs : 0;
  return { totalMs: totalUs / 1000, idleMs: idleUs / 1000, functions };
}

/** The benchmark runs the compiled server (dist/, see run.ts): its files are named by their sources. */
export function sourceName(where: string): string {
  return where.startsWith('dist/') ? `src/${where.slice('dist/'.length).replace(/\.js$/, '.ts')}` : where;
}

/**
 * Inclusive time of the project's own functions (src/): each sample counts once for every
 * src/ function on its stack, so a caller's figure includes the callees it waits on.
 */
export function inclusiveSrcFunctions(profile: Profile, repoRoot: string): FunctionTime[] {
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const byNode = new Map(profile.nodes.map((n) => [n.id, n]));
  const keyOf = new Map<number, { key: string; name: string; where: string } | null>();
  const describe = (id: number) => {
    let k = keyOf.get(id);
    if (k !== undefined) return k;
    const f = byNode.get(id)!.callFrame;
    if (!f.url.startsWith('file://')) k = null;
    else {
      const where = sourceName(relative(repoRoot, fileURLToPath(f.url)));
      k = where.startsWith('src/') ? { key: `${f.functionName} ${where}`, name: f.functionName || '(anonymous)', where } : null;
    }
    keyOf.set(id, k);
    return k;
  };
  const total = new Map<string, FunctionTime>();
  let busyUs = 0;
  profile.samples.forEach((leaf, i) => {
    const us = profile.timeDeltas[i] ?? 0;
    if (byNode.get(leaf)?.callFrame.functionName === '(idle)') return;
    busyUs += us;
    const seen = new Set<string>();
    for (let id: number | undefined = leaf; id !== undefined; id = parent.get(id)) {
      const k = describe(id);
      if (!k || seen.has(k.key)) continue;
      seen.add(k.key);
      const e = total.get(k.key) ?? { name: k.name, where: k.where, selfMs: 0, share: 0 };
      e.selfMs += us / 1000;
      total.set(k.key, e);
    }
  });
  const out = [...total.values()].sort((a, b) => b.selfMs - a.selfMs);
  for (const f of out) f.share = busyUs > 0 ? (f.selfMs * 1000) / busyUs : 0;
  return out;
}

export interface Mark {
  label: string;
  startUs: number;
  endUs: number;
}

/** The profile restricted to the samples taken inside the windows (sample times are on the marks' clock). */
export function withinWindows(profile: Profile, windows: readonly Mark[]): Profile {
  const samples: number[] = [];
  const timeDeltas: number[] = [];
  let t = profile.startTime;
  profile.samples.forEach((id, i) => {
    const delta = profile.timeDeltas[i] ?? 0;
    t += delta;
    if (windows.some((w) => t >= w.startUs && t <= w.endUs)) {
      samples.push(id);
      timeDeltas.push(delta);
    }
  });
  return { ...profile, samples, timeDeltas };
}

function printTables(profile: Profile, repoRoot: string, top: number, title: string): void {
  const { totalMs, idleMs, functions } = topFunctions(profile, repoRoot);
  console.log(`${title}: ${(totalMs / 1000).toFixed(3)} s busy, ${(idleMs / 1000).toFixed(3)} s idle`);
  console.log('| self ms | share | function | where |');
  console.log('|---:|---:|---|---|');
  for (const f of functions.slice(0, top)) console.log(`| ${f.selfMs.toFixed(0)} | ${(f.share * 100).toFixed(1)}% | ${f.name} | ${f.where} |`);
  console.log('');
  console.log('| inclusive ms | share | src/ function | file |');
  console.log('|---:|---:|---|---|');
  for (const f of inclusiveSrcFunctions(profile, repoRoot).slice(0, top)) console.log(`| ${f.selfMs.toFixed(0)} | ${(f.share * 100).toFixed(1)}% | ${f.name} | ${f.where} |`);
  console.log('');
}

if (process.argv[1] && import.meta.url === new URL(`file://${process.argv[1]}`).href) {
  const file = process.argv[2];
  if (!file) {
    console.error('usage: node --import tsx bench/profile-summary.ts PROFILE.cpuprofile [--top N]');
    process.exit(2);
  }
  const topIdx = process.argv.indexOf('--top');
  const top = topIdx > 0 ? Number(process.argv[topIdx + 1]) : 25;
  const repoRoot = fileURLToPath(new URL('..', import.meta.url));
  const arg = (name: string) => {
    const at = process.argv.indexOf(name);
    return at > 0 ? process.argv[at + 1] : undefined;
  };
  const profile = JSON.parse(readFileSync(file, 'utf8')) as Profile;
  const marksFile = arg('--marks');
  if (!marksFile) {
    printTables(profile, repoRoot, top, file);
  } else {
    const prefix = arg('--only') ?? '';
    const windows = (JSON.parse(readFileSync(marksFile, 'utf8')) as Mark[]).filter((m) => m.label.startsWith(prefix));
    if (windows.length === 0) throw new Error(`no window in ${marksFile} starts with "${prefix}"`);
    if (process.argv.includes('--per-window')) {
      for (const w of windows) printTables(withinWindows(profile, [w]), repoRoot, Math.min(top, 8), `${w.label} (${((w.endUs - w.startUs) / 1000).toFixed(1)} ms)`);
    }
    printTables(withinWindows(profile, windows), repoRoot, top, `${file}, ${windows.length} windows "${prefix}*"`);
  }
}

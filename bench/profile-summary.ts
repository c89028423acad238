/*
 * Top functions of a V8 CPU profile (node --cpu-prof), by self time, with the share of all samples:
 *
 *   node --import tsx bench/profile-summary.ts PROFILE.cpuprofile [--top 25]
 *
 * `npm run bench -- --cpu-prof DIR` writes one profile per agentid server process into DIR.
 */
import { readFileSync } from 'node:fs';
import { relative } from 'node:path';
import { fileURLToPath } from 'node:url';

interface ProfileNode {
  id: number;
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

/** Self time per function (same name and location merged), largest first. */
export function topFunctions(profile: Profile, repoRoot: string): { totalMs: number; functions: FunctionTime[] } {
  const byNode = new Map(profile.nodes.map((n) => [n.id, n]));
  const selfUs = new Map<number, number>();
  profile.samples.forEach((id, i) => selfUs.set(id, (selfUs.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0)));
  const merged = new Map<string, FunctionTime>();
  let totalUs = 0;
  for (const [id, us] of selfUs) {
    totalUs += us;
    const f = byNode.get(id)!.callFrame;
    let where = f.url;
    if (where.startsWith('file://')) where = relative(repoRoot, fileURLToPath(where));
    where = where ? `${where}:${f.lineNumber + 1}` : '';
    const name = f.functionName || '(anonymous)';
    const key = `${name} ${where}`;
    const entry = merged.get(key) ?? { name, where, selfMs: 0, share: 0 };
    entry.selfMs += us / 1000;
    merged.set(key, entry);
  }
  const functions = [...merged.values()].sort((a, b) => b.selfMs - a.selfMs);
  for (const f of functions) f.share = totalUs > 0 ? (f.selfMs * 1000) / totalUs : 0;
  return { totalMs: totalUs / 1000, functions };
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
  const { totalMs, functions } = topFunctions(JSON.parse(readFileSync(file, 'utf8')) as Profile, repoRoot);
  console.log(`${file}: ${(totalMs / 1000).toFixed(1)} s of samples`);
  console.log('| self ms | share | function | where |');
  console.log('|---:|---:|---|---|');
  for (const f of functions.slice(0, top)) console.log(`| ${f.selfMs.toFixed(0)} | ${(f.share * 100).toFixed(1)}% | ${f.name} | ${f.where} |`);
}

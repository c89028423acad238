import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { afterEach, describe, expect, it } from 'vitest';
import { FULL_READ_EVERY, LivenessMemo, systemProcessInspector } from './processes.js';
import { readProcessRef } from './proc.js';

// Real processes on the real /proc: the memo's point is what the kernel's procfs does.
const started: ChildProcess[] = [];
afterEach(() => {
  for (const p of started.splice(0)) p.kill('SIGKILL');
});

function sleeper(): ChildProcess {
  const child = spawn('sleep', ['60'], { stdio: 'ignore' });
  started.push(child);
  return child;
}

/** A parent that forks a sleeping child and never reaps it: killing the child leaves a zombie. */
async function parentOfUnreapedChild(): Promise<{ childPid: number }> {
  const parent = spawn('python3', ['-c', 'import os,sys,time\npid=os.fork()\nif pid==0:\n  time.sleep(60); os._exit(0)\nprint(pid, flush=True)\ntime.sleep(60)'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  started.push(parent);
  const [line] = (await once(createInterface({ input: parent.stdout! }), 'line')) as [string];
  return { childPid: Number(line) };
}

async function refOf(pid: number) {
  const ref = await readProcessRef(pid);
  if (!ref) throw new Error(`process ${pid} is not running`);
  return ref;
}

async function stateOf(pid: number): Promise<string | undefined> {
  const { readFile } = await import('node:fs/promises');
  const text = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
  return text?.slice(text.lastIndexOf(')') + 2, text.lastIndexOf(')') + 3);
}

describe('LivenessMemo on the real /proc', () => {
  it('remembers a live process and keeps saying it is alive', async () => {
    const child = sleeper();
    const ref = await refOf(child.pid!);
    const memo = new LivenessMemo();
    for (let i = 0; i < 3 * FULL_READ_EVERY; i++) expect(await memo.isAlive(ref)).toBe(true);
    expect(memo.size()).toBe(1);
  });

  it('says a reaped process is gone on the first check after it exits', async () => {
    const child = sleeper();
    const ref = await refOf(child.pid!);
    const memo = new LivenessMemo();
    expect(await memo.isAlive(ref)).toBe(true);
    child.kill('SIGKILL');
    await once(child, 'exit'); // node reaps its children: /proc/PID is gone
    expect(await memo.isAlive(ref)).toBe(false);
    expect(memo.size()).toBe(0);
  });

  it('never takes another start time for the remembered process', async () => {
    const child = sleeper();
    const ref = await refOf(child.pid!);
    const memo = new LivenessMemo();
    expect(await memo.isAlive(ref)).toBe(true);
    expect(await memo.isAlive({ pid: ref.pid, startTime: String(BigInt(ref.startTime) + 1n) })).toBe(false);
  });

  it('notices a zombie (exited, not reaped) within FULL_READ_EVERY checks', async () => {
    const { childPid } = await parentOfUnreapedChild();
    const ref = await refOf(childPid);
    const memo = new LivenessMemo();
    expect(await memo.isAlive(ref)).toBe(true);
    process.kill(childPid, 'SIGKILL');
    for (let i = 0; i < 100 && (await stateOf(childPid)) !== 'Z'; i++) await new Promise((r) => setTimeout(r, 10));
    expect(await stateOf(childPid)).toBe('Z');
    const answers: boolean[] = [];
    for (let i = 0; i < FULL_READ_EVERY; i++) answers.push(await memo.isAlive(ref));
    expect(answers.at(-1)).toBe(false);
    // A new memo reads in full on its first check: a zombie is gone at once.
    expect(await new LivenessMemo().isAlive(ref)).toBe(false);
  });

  it('the system inspector uses it on /proc only', async () => {
    const { childPid } = await parentOfUnreapedChild();
    const ref = await refOf(childPid);
    const onProc = systemProcessInspector();
    const onFixture = systemProcessInspector({ procRoot: '/proc/.' }); // same files, another root: read in full every time
    expect(await onProc.isAlive(ref)).toBe(true);
    expect(await onFixture.isAlive(ref)).toBe(true);
    process.kill(childPid, 'SIGKILL');
    for (let i = 0; i < 100 && (await stateOf(childPid)) !== 'Z'; i++) await new Promise((r) => setTimeout(r, 10));
    expect(await onFixture.isAlive(ref)).toBe(false);
    expect(await onProc.isAlive(ref)).toBe(true); // remembered: a zombie looks alive to a stat
  });
});

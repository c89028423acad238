import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { parseIdNames } from './accounts.js';
import { isAlive, parseCgroupV2, parseStat, parseStatusGroups, readProcessRef } from './proc.js';

// Fields 3..52 of a real stat line after "(comm) "; starttime (field 22) is 987654.
const TAIL = 'S 41 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 2265088 128 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0';

describe('parseStat', () => {
  it.each([
    { fixture: 'plain-comm', text: `1234 (sleep) ${TAIL}\n`, comm: 'sleep' },
    { fixture: 'comm-with-spaces', text: `1234 (my agent) ${TAIL}\n`, comm: 'my agent' },
    { fixture: 'comm-with-close-paren-and-digits', text: `1234 (a) 1 2 (x) ${TAIL}\n`, comm: 'a) 1 2 (x' },
    { fixture: 'comm-ending-in-paren', text: `1234 (x)) ${TAIL}\n`, comm: 'x)' },
    { fixture: 'comm-with-newline', text: `1234 (a\nb) ${TAIL}\n`, comm: 'a\nb' },
    { fixture: 'empty-comm', text: `1234 () ${TAIL}\n`, comm: '' },
  ])('$fixture: start time is field 22 whatever comm holds', ({ text, comm }) => {
    expect(parseStat(text)).toEqual({ pid: 1234, comm, state: 'S', ppid: 41, startTime: '987654' });
  });

  it('keeps start times beyond 2^53 exact', () => {
    const big = TAIL.replace(' 987654 ', ' 18446744073709551610 ');
    expect(parseStat(`7 (x) ${big}`).startTime).toBe('18446744073709551610');
  });

  it.each([
    { fixture: 'truncated-before-starttime', text: '1234 (sleep) S 41 42 42 0' },
    { fixture: 'no-comm-parens', text: `1234 sleep ${TAIL}` },
    { fixture: 'non-numeric-starttime', text: `1234 (x) ${TAIL.replace(' 987654 ', ' 98x654 ')}` },
    { fixture: 'non-numeric-pid', text: `abc (x) ${TAIL}` },
  ])('$fixture: rejected', ({ text }) => {
    expect(() => parseStat(text)).toThrow(/proc stat/);
  });
});

describe('parseCgroupV2', () => {
  it.each([
    { fixture: 'v2-only', text: '0::/agents/a1\n', want: '/agents/a1' },
    { fixture: 'v2-root', text: '0::/\n', want: '/' },
    { fixture: 'hybrid-v1-and-v2', text: '12:memory:/docker/x\n4:cpu:/y\n0::/system.slice/agent.service\n', want: '/system.slice/agent.service' },
    { fixture: 'v1-only', text: '4:memory:/a\n1:name=systemd:/user.slice\n', want: null },
    { fixture: 'path-with-space-and-colon', text: '0::/a b/c:d\n', want: '/a b/c:d' },
    { fixture: 'v1-line-with-0-prefix-but-controller', text: '0:cpu:/nope\n', want: null },
    { fixture: 'empty-file', text: '', want: null },
  ])('$fixture', ({ text, want }) => {
    expect(parseCgroupV2(text)).toBe(want);
  });
});

describe('parseStatusGroups', () => {
  it.each([
    { fixture: 'several', text: 'Name:\tx\nGid:\t0\t0\t0\t0\nGroups:\t4 24 27 1000 \nNStgid:\t1\n', want: [4, 24, 27, 1000] },
    { fixture: 'none', text: 'Name:\tx\nGroups:\t\nNStgid:\t1\n', want: [] },
  ])('$fixture', ({ text, want }) => {
    expect(parseStatusGroups(text)).toEqual(want);
  });

  it('missing-groups-line: rejected', () => {
    expect(() => parseStatusGroups('Name:\tx\n')).toThrow(/Groups/);
  });
});

describe('parseIdNames', () => {
  it('first entry per id wins, odd but legal names kept, malformed lines skipped', () => {
    const text = [
      'root:x:0:0:root:/root:/bin/bash',
      'toor:x:0:0:second root:/root:/bin/sh',
      'svc.agent-1$:x:1001:1001::/:/usr/sbin/nologin',
      'ünïcødé:x:1002:1002::/:/bin/false',
      'name with space:x:1003:1003::/:/bin/false',
      '+nisuser::1004:1004:::',
      'noid:x::1005::/:',
      '# comment:x:1006:1006::/:',
      'short:x',
      '',
    ].join('\n');
    expect(parseIdNames(text)).toEqual(
      new Map([
        [0, 'root'],
        [1001, 'svc.agent-1$'],
        [1002, 'ünïcødé'],
        [1003, 'name with space'],
      ]),
    );
  });
});

describe('readProcessRef / isAlive on real processes', () => {
  it('names a live process and reports it gone once it exits', async () => {
    const child = spawn('sleep', ['30'], { stdio: 'ignore' });
    const pid = child.pid!;
    const ref = await readProcessRef(pid);
    expect(ref?.pid).toBe(pid);
    expect(ref?.startTime).toMatch(/^\d+$/);
    expect(await isAlive(ref!)).toBe(true);

    child.kill('SIGKILL');
    await once(child, 'exit');
    expect(await readProcessRef(pid)).toBeUndefined();
    expect(await isAlive(ref!)).toBe(false);
  });

  it('a ref with the right PID but another start time (a reused PID) is not alive', async () => {
    const self = (await readProcessRef(process.pid))!;
    expect(await isAlive(self)).toBe(true);
    expect(await isAlive({ pid: process.pid, startTime: String(BigInt(self.startTime) + 1n) })).toBe(false);
  });

  it('agrees with the kernel on a process whose comm has ") " in it', async () => {
    const child = spawn(process.execPath, ['-e', "process.title = 'x) 1 2 ('; process.stdout.write('ready'); setInterval(() => {}, 1e5)"], {
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    try {
      await once(child.stdout!, 'data');
      const raw = await readFile(`/proc/${child.pid}/stat`, 'utf8');
      expect(raw).toContain('(x) 1 2 ()');
      const ref = await readProcessRef(child.pid!);
      // Naive splitting on spaces would read field 22 four places off.
      expect(ref?.startTime).toBe(raw.slice(raw.lastIndexOf(')') + 2).split(' ')[19]);
      expect(raw.split(' ')[21]).not.toBe(ref?.startTime);
    } finally {
      child.kill('SIGKILL');
    }
  });

  it('a zombie (exited, not reaped) is gone', async () => {
    // sh forks a short sleep, then becomes `sleep 30`, which never waits for it: once the short
    // one exits (well after the exec) it stays a zombie.
    const sh = spawn('sh', ['-c', 'sleep 0.2 & echo $!; exec sleep 30'], { stdio: ['ignore', 'pipe', 'ignore'] });
    try {
      const [line] = (await once(sh.stdout!, 'data')) as [Buffer];
      const zombie = Number(line.toString().trim());
      for (let i = 0; i < 250; i++) {
        const stat = await readFile(`/proc/${zombie}/stat`, 'utf8');
        if (parseStat(stat).state === 'Z') break;
        await new Promise((r) => setTimeout(r, 20));
      }
      expect(parseStat(await readFile(`/proc/${zombie}/stat`, 'utf8')).state).toBe('Z');
      expect(await readProcessRef(zombie)).toBeUndefined();
    } finally {
      sh.kill('SIGKILL');
    }
  });
});

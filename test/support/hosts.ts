import { execFileSync, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { randomBytes } from 'node:crypto';

/*
 * Separate "hosts" for multi-host tests: each is a network namespace (`ip netns`, Debian's
 * iproute2) with one veth link into a bridge in the root namespace, so hosts reach each other
 * only over IP, as separate machines would. Needs root (CI runs as root); netnsAvailable() tells
 * a developer's unprivileged run why the tests are skipped.
 *
 * Network namespaces separate the network only: the hosts still share the file system and the
 * PID namespace, so a test must point each workload at its own host's agent socket.
 */

const SUBNET = '10.231'; // 10.231.<net>.0/24, <net> random per set of hosts: parallel test files never collide

function ip(...args: string[]): void {
  execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

export function netnsAvailable(): boolean {
  if (process.getuid?.() !== 0) return false;
  try {
    execFileSync('ip', ['netns', 'list'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

export interface Host {
  name: string;
  /** The network namespace the host's processes run in. */
  netns: string;
  /** The host's IPv4 address on the shared link. */
  address: string;
  /** Spawns a process inside the host (argv[0] is looked up on PATH). */
  spawn(command: string, args: string[], options?: SpawnOptions): ChildProcess;
  /** Runs a command inside the host to completion; returns stdout. */
  run(command: string, args: string[]): string;
  /** Cuts (false) or restores (true) the host's link: a network partition. */
  setLink(up: boolean): void;
}

export interface HostSet {
  hosts: Map<string, Host>;
  close(): void;
}

/** Creates one host per name on a shared bridge. close() deletes them (and their links) again. */
export function createHosts(names: readonly string[]): HostSet {
  const tag = randomBytes(2).toString('hex');
  const net = 1 + (randomBytes(1)[0]! % 250);
  const bridge = `ai${tag}br`;
  const created: string[] = [];
  const close = () => {
    for (const ns of created) {
      try {
        ip('netns', 'del', ns);
      } catch {
        /* already gone */
      }
    }
    try {
      ip('link', 'del', bridge);
    } catch {
      /* already gone */
    }
  };
  try {
    ip('link', 'add', bridge, 'type', 'bridge');
    ip('link', 'set', bridge, 'up');
    const hosts = new Map<string, Host>();
    names.forEach((name, i) => {
      const netns = `agentid-${tag}-${name}`;
      const outside = `ai${tag}h${i}`;
      const inside = `ai${tag}g${i}`;
      const address = `${SUBNET}.${net}.${10 + i}`;
      ip('netns', 'add', netns);
      created.push(netns);
      ip('link', 'add', outside, 'type', 'veth', 'peer', 'name', inside);
      ip('link', 'set', inside, 'netns', netns);
      ip('link', 'set', outside, 'master', bridge);
      ip('link', 'set', outside, 'up');
      ip('-n', netns, 'addr', 'add', `${address}/24`, 'dev', inside);
      ip('-n', netns, 'link', 'set', inside, 'up');
      ip('-n', netns, 'link', 'set', 'lo', 'up');
      hosts.set(name, {
        name,
        netns,
        address,
        spawn: (command, args, options = {}) => spawn('ip', ['netns', 'exec', netns, command, ...args], options),
        run: (command, args) => execFileSync('ip', ['netns', 'exec', netns, command, ...args], { encoding: 'utf8' }),
        setLink: (up) => ip('-n', netns, 'link', 'set', inside, up ? 'up' : 'down'),
      });
    });
    return { hosts, close };
  } catch (err) {
    close();
    throw err;
  }
}

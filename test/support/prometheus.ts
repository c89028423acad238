/* Parses Prometheus text exposition with an independent parser (Python's prometheus_client) plus a strict line grammar check. */
import { spawnSync } from 'node:child_process';

export interface PromSample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

const PARSER = `
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    # A family with no samples yet (a labelled counter nothing has moved) still counts as present.
    out.append({"family": family.name, "type": family.type, "name": None, "labels": {}, "value": 0})
    for s in family.samples:
        out.append({"family": family.name, "type": family.type, "name": s.name, "labels": s.labels, "value": s.value if s.value == s.value else None})
print(json.dumps(out))
`;

/** Every line: a comment (# HELP / # TYPE), a sample `name{l="v",...} value`, or empty (the format ignores empty lines). */
const LINE = /^(?:$|# (?:HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .*|[a-zA-Z_:][a-zA-Z0-9_:]*(?:\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*\})? (?:[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+)|NaN|[-+]Inf))$/;

export function parsePrometheus(text: string): (PromSample & { family: string; type: string })[] {
  const lines = text.split('\n');
  if (lines.at(-1) === '') lines.pop();
  lines.forEach((line, i) => {
    if (!LINE.test(line)) throw new Error(`metrics line ${i + 1} is not Prometheus text format: ${JSON.stringify(line)}`);
  });
  const r = spawnSync('/usr/bin/python3', ['-c', PARSER], { input: text, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`prometheus_client could not parse the metrics: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

export function sum(samples: PromSample[], name: string, labels: Record<string, string> = {}): number {
  return samples
    .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .reduce((a, s) => a + s.value, 0);
}

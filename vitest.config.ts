import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['src/**/*.test.ts', 'test/**/*.test.ts', 'bench/**/*.test.ts'],
    // Integration tests start real servers and child processes; two cores, so keep parallelism modest.
    pool: 'forks',
    maxWorkers: 2,
    // End-to-end tests spawn several tsx processes (about a second each on a loaded 2-core machine).
    testTimeout: 60_000,
    hookTimeout: 60_000,
  },
});

import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { GENERATED, consoleAssetsModule } from '../../scripts/build-console.js';

describe('console assets', () => {
  it('the committed assets.generated.ts is a fresh build of src/console/web (run npm run build:console)', async () => {
    expect(readFileSync(GENERATED, 'utf8')).toBe(await consoleAssetsModule());
  });
});

/**
 * `npm run rebuild`: re-projects every event into fresh read-model tables and swaps them in
 * (services/projector/rebuild.ts, docs/projector.md), in the database of the stack `npm start`
 * runs here unless DATABASE_URL names another (scripts/stackDatabase.ts).
 */
import { useStackDatabase } from './stackDatabase.ts';

useStackDatabase(process.env, 'set DATABASE_URL to rebuild another deployment');
const { rebuildCli } = await import('../services/projector/rebuild.ts');
await rebuildCli().catch((e: unknown) => {
  process.stderr.write(`rebuild failed: ${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});

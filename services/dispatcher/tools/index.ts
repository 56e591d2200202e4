import type { ToolDefinition } from '../../../lib/tools/index.ts';
import { adminRuntimeInfo } from './adminRuntimeInfo.ts';
import { costAnalyzer } from './costAnalyzer.ts';
import { datasetStatsTool } from './datasetStats.ts';
import { countdown, waitForCancel } from './demo.ts';
import { secretVaultCheck } from './secretVaultCheck.ts';

export { adminRuntimeInfo } from './adminRuntimeInfo.ts';
export { analyzeCosts, costAnalyzer, roundCents, rowSavings } from './costAnalyzer.ts';
export { countdown, waitForCancel } from './demo.ts';
export { columnStats, datasetStats, datasetStatsTool, percentile } from './datasetStats.ts';
export { checkKey, secretVaultCheck } from './secretVaultCheck.ts';
export { testTools } from './testing.ts';

/** The tools the dispatcher registers by default (the test tools are in ./testing.ts). */
export const exampleTools: ToolDefinition[] = [
  costAnalyzer,
  datasetStatsTool,
  adminRuntimeInfo,
  secretVaultCheck,
  countdown,
  waitForCancel,
];

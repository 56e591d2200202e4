/**
 * The Toolbus configuration file (contracts/toolbusConfig.ts): found, read, checked, and its tool
 * modules imported. Used by every process that serves tools (the dispatcher, `npm run worker`) and
 * by `npm start`'s set-up, which authorizes the worker identity for the same tools.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname, isAbsolute, relative, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { z } from 'zod';
import { ToolbusConfigFile } from '../contracts/toolbusConfig.ts';
import { ConfigError, loadConfig } from './config.ts';
import { toManifest, type ToolDefinition } from './tools/index.ts';

/** The checkout's own configuration file, used when TOOLBUS_CONFIG is not set and the file exists. */
export const DEFAULT_CONFIG_FILE = fileURLToPath(new URL('../toolbus.json', import.meta.url));

export const ToolbusConfigEnv = z.object({
  /** The configuration file; default `toolbus.json` at the checkout root, when it exists. */
  TOOLBUS_CONFIG: z.string().optional(),
});

/** A configuration file that cannot be used; every problem names the file. */
export class ToolbusConfigError extends ConfigError {
  constructor(
    file: string,
    /** The problems, without the file's name. */
    readonly reasons: string[],
  ) {
    super(reasons.map((p) => `${file}: ${p}`));
    this.name = 'ToolbusConfigError';
  }
}

export interface ToolbusConfig {
  /** The file it came from (absolute). */
  file: string;
  /** The tool modules, as absolute paths. */
  tools: string[];
  /** The tool modules only a worker serves (`workerTools`), as absolute paths. */
  workerTools: string[];
  /** Opaque here: the MCP-tools work reads it. */
  mcpServers: ToolbusConfigFile['mcpServers'];
}

/**
 * The configuration file to use: TOOLBUS_CONFIG (relative to the working directory; it must
 * exist), else the checkout's `toolbus.json` when there is one, else none.
 */
export function toolbusConfigFile(env: Record<string, string | undefined> = process.env): string | undefined {
  const named = loadConfig(ToolbusConfigEnv, env).TOOLBUS_CONFIG;
  if (named !== undefined) {
    const file = resolve(named);
    if (!existsSync(file))
      throw new ConfigError([`TOOLBUS_CONFIG: no such file ${file} (unset it to use none)`]);
    return file;
  }
  return existsSync(DEFAULT_CONFIG_FILE) ? DEFAULT_CONFIG_FILE : undefined;
}

/** Reads and checks a configuration file; module paths are resolved against its folder. */
export async function readToolbusConfig(file: string): Promise<ToolbusConfig> {
  let json: unknown;
  try {
    json = JSON.parse(await readFile(file, 'utf8'));
  } catch (e) {
    throw new ToolbusConfigError(file, [`cannot be read as JSON: ${(e as Error).message}`]);
  }
  const parsed = ToolbusConfigFile.safeParse(json);
  if (!parsed.success) {
    throw new ToolbusConfigError(
      file,
      parsed.error.issues.map((i) => `${i.path.join('.') || '(top level)'}: ${i.message}`),
    );
  }
  const dir = dirname(file);
  const absolute = (p: string) => (isAbsolute(p) ? p : resolve(dir, p));
  return {
    file,
    tools: parsed.data.tools.map(absolute),
    workerTools: parsed.data.workerTools.map(absolute),
    mcpServers: parsed.data.mcpServers,
  };
}

/**
 * The tools of one module: its default export, a definition or an array of them, each checked as
 * `defineTool` checks it (so a bad tool stops start-up with the module's name and every problem).
 */
export async function importToolModule(path: string, file = path): Promise<ToolDefinition[]> {
  const near = relative(process.cwd(), path);
  const shown = near && !near.startsWith('..') ? near : path;
  if (!existsSync(path)) throw new ToolbusConfigError(file, [`tool module ${shown} does not exist`]);
  let mod: { default?: unknown };
  try {
    mod = (await import(pathToFileURL(path).href)) as { default?: unknown };
  } catch (e) {
    throw new ToolbusConfigError(file, [`tool module ${shown} failed to load: ${(e as Error).message}`]);
  }
  if (mod.default === undefined) {
    throw new ToolbusConfigError(file, [
      `tool module ${shown} has no default export: export default a tool made with defineTool, or an array of them`,
    ]);
  }
  const tools = (Array.isArray(mod.default) ? mod.default : [mod.default]) as ToolDefinition[];
  const problems: string[] = [];
  tools.forEach((tool, i) => {
    try {
      toManifest(tool);
    } catch (e) {
      problems.push(
        `tool module ${shown}, default export${Array.isArray(mod.default) ? `[${i}]` : ''}: ${(e as Error).message}`,
      );
    }
  });
  if (problems.length > 0) throw new ToolbusConfigError(file, problems);
  return tools;
}

/**
 * Who loads the tools: the dispatcher (`tools`, run in its process), or a worker and the set-up
 * that authorizes it (`tools` and `workerTools`).
 */
export type ToolsFor = 'dispatcher' | 'worker';

/** The tools the configuration names for `who`, in order; a name@version given twice is refused. */
export async function loadConfiguredTools(
  config: ToolbusConfig | undefined,
  who: ToolsFor = 'dispatcher',
): Promise<ToolDefinition[]> {
  if (!config) return [];
  const tools: ToolDefinition[] = [];
  const modules = who === 'worker' ? [...config.tools, ...config.workerTools] : config.tools;
  // Every module is tried, so that one start names every bad one.
  const problems: string[] = [];
  for (const path of modules) {
    try {
      tools.push(...(await importToolModule(path, config.file)));
    } catch (e) {
      if (!(e instanceof ToolbusConfigError)) throw e;
      problems.push(...e.reasons);
    }
  }
  if (problems.length > 0) throw new ToolbusConfigError(config.file, problems);
  const seen = new Set<string>();
  for (const t of tools) {
    const id = `${t.name}@${t.version}`;
    if (seen.has(id)) throw new ToolbusConfigError(config.file, [`tool ${id} is defined twice`]);
    seen.add(id);
  }
  return tools;
}

/** The tools of the configuration file the environment points at, for `who` (none without one). */
export async function toolsFromConfiguration(
  env: Record<string, string | undefined> = process.env,
  who: ToolsFor = 'dispatcher',
): Promise<ToolDefinition[]> {
  const file = toolbusConfigFile(env);
  return loadConfiguredTools(file === undefined ? undefined : await readToolbusConfig(file), who);
}

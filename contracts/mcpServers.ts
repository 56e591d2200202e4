import { z } from 'zod';
import { Role } from './auth.ts';
import { ToolNamespace, ToolVersion } from './ids.ts';
import { MAX_TIMEOUT_MS } from './manifest.ts';

/**
 * The `mcpServers` key of the Toolbus configuration file (contracts/toolbusConfig.ts, which accepts
 * it as an opaque record):
 * the existing MCP servers the MCP tool provider (services/mcp-tools) serves as Toolbus tools.
 * Each entry is what MCP clients already write (`command`/`args`/`env` for stdio, `url` for
 * Streamable HTTP) plus an optional `toolbus` block. The entry's key is the tools' namespace:
 * server `everything`'s tool `echo` is the Toolbus tool `everything.echo`.
 *
 * Only this key is described here.
 */

/** A tool name as an MCP server spells it, when it can be a Toolbus name part (one subject token). */
export const McpToolName = z
  .string()
  .regex(/^[A-Za-z0-9_-]{1,64}$/, 'an MCP tool name here must match [A-Za-z0-9_-]{1,64}');

const TimeoutMs = z.number().int().min(1).max(MAX_TIMEOUT_MS);

/**
 * What the configuration says about one tool, over the server's defaults. A server's own
 * annotations are hints from a program Toolbus does not trust: a tool is idempotent (re-run after a
 * crash) or not destructive only when this says so.
 */
export const McpToolOverride = z.strictObject({
  roles: z.array(Role).max(16).optional(),
  timeoutMs: TimeoutMs.optional(),
  /** Safe to run again: re-run when the server dies during the call (default false). */
  idempotent: z.boolean().optional(),
  /** Announced as `destructiveHint` (default true). */
  destructive: z.boolean().optional(),
});
export type McpToolOverride = z.infer<typeof McpToolOverride>;

/** Toolbus's part of a server entry. */
export const McpToolbusBlock = z.strictObject({
  /** The caller needs every one of these roles for every tool of the server (default none). */
  roles: z.array(Role).max(16).default([]),
  /** Per call (default 30 000; at most 600 000). */
  timeoutMs: TimeoutMs.default(30_000),
  /**
   * `keep-running` (default): started with the provider and restarted (with backoff) whenever it
   * dies; its tools are withdrawn while it is down. `on-demand`: started once to read its tools,
   * then stopped after `idleMs` without calls and started again by the next call.
   */
  lifecycle: z.enum(['keep-running', 'on-demand']).default('keep-running'),
  /** For `on-demand`: stop after this long without a call (default 60 000). */
  idleMs: z.number().int().min(1_000).max(86_400_000).default(60_000),
  /** Connecting and the `initialize` handshake must finish within this (default 10 000). */
  startTimeoutMs: z.number().int().min(100).max(120_000).default(10_000),
  /** The version every tool of the server is announced with (MCP tools have none). Default 1.0.0. */
  version: ToolVersion.default('1.0.0'),
  /** More notifications than this in one second is a fault: the server is stopped and restarted. */
  maxNotificationsPerSecond: z.number().int().min(1).max(100_000).default(200),
  /** Per-tool settings, by the server's tool name. */
  tools: z.record(McpToolName, McpToolOverride).default({}),
});
export type McpToolbusBlock = z.infer<typeof McpToolbusBlock>;

/** A server the provider starts as a child process and speaks to over its stdin/stdout. */
export const McpStdioServer = z.strictObject({
  type: z.literal('stdio').optional(),
  command: z.string().min(1).max(4096),
  args: z.array(z.string().max(4096)).max(256).default([]),
  /** Added to a minimal inherited environment (PATH, HOME, ...: the SDK's default), not to the provider's. */
  env: z.record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/), z.string()).default({}),
  cwd: z.string().min(1).optional(),
  toolbus: McpToolbusBlock.default(McpToolbusBlock.parse({})),
});

/** A server already running, reached over Streamable HTTP. */
export const McpHttpServer = z.strictObject({
  type: z.enum(['http', 'streamable-http', 'streamableHttp']).optional(),
  url: z.url({ protocol: /^https?$/ }),
  /** Sent with every request (an API key the server wants, for example). */
  headers: z.record(z.string(), z.string()).default({}),
  toolbus: McpToolbusBlock.default(McpToolbusBlock.parse({})),
});

export const McpServerConfig = z.union([McpStdioServer, McpHttpServer]);
export type McpServerConfig = z.infer<typeof McpServerConfig>;
export type McpStdioServer = z.infer<typeof McpStdioServer>;
export type McpHttpServer = z.infer<typeof McpHttpServer>;

/** The `mcpServers` map: namespace (the key) -> server. */
export const McpServers = z
  .record(ToolNamespace, McpServerConfig)
  .refine((servers) => Object.keys(servers).length <= 64, 'at most 64 MCP servers');
export type McpServers = z.infer<typeof McpServers>;

export const isStdioServer = (s: McpServerConfig): s is McpStdioServer => 'command' in s;

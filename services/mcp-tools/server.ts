/**
 * One configured MCP server behind the provider: its connection (the official SDK client over
 * stdio or Streamable HTTP), its tools served on the bus, and its life (docs/tools.md, "Existing
 * MCP servers"):
 * - keep-running: connected at start, restarted with backoff whenever it dies, its tools
 *   withdrawn while it is down and announced again when it is back;
 * - on-demand: connected once to read its tools (announced from then on), closed after a quiet
 *   spell and connected again by the next call;
 * - a call in flight when the server dies ends INTERRUPTED, or runs again once the server is back
 *   when the configuration says the tool is idempotent;
 * - `notifications/tools/list_changed` makes it read and announce its tools again;
 * - a server that floods notifications or errors is stopped (and, kept running, restarted).
 * Every failure is logged naming the server; no failure of one server touches another.
 */
import type { Readable } from 'node:stream';
import {
  Client,
  ProtocolError,
  SdkError,
  SdkErrorCode,
  StreamableHTTPClientTransport,
  type CallToolResult,
  type Tool,
} from '@modelcontextprotocol/client';
import { StdioClientTransport } from '@modelcontextprotocol/client/stdio';
import { canonicalJson, isStdioServer, MAX_TIMEOUT_MS, type McpServerConfig } from '../../contracts/index.ts';
import type { Logger } from '../../lib/log.ts';
import type { NatsConnection } from '../../lib/nats.ts';
import { backoffMs } from '../../lib/retry.ts';
import {
  clip,
  serveTools,
  toManifest,
  ToolOutputError,
  ToolRunError,
  type ToolContext,
  type ToolServer,
} from '../../lib/tools/index.ts';
import { contentResult, toolDefinitions, type McpCall } from './tools.ts';

const CLIENT_INFO = { name: 'toolbus-mcp-tools', version: '1.0.0' };
/** The last lines a server wrote to stderr, kept to say why it did not start. */
const STDERR_LINES = 5;
/** A call waits at most this many times for its server to come back (idempotent tools only). */
const MAX_RERUNS = 2;
/** Up this long, a server's restart backoff starts again from its shortest wait. */
const STABLE_MS = 30_000;

export interface ServerLinkOptions {
  /** The namespace: the key of the server in `mcpServers`. */
  name: string;
  config: McpServerConfig;
  nc: NatsConnection;
  secret: string;
  /** The provider's worker id; this server's tools are announced by `<workerId>:<name>`. */
  workerId: string;
  announceIntervalMs?: number;
  /** Restart backoff (default 500 ms doubling to 30 s, with jitter). */
  restart?: { minMs: number; maxMs: number };
  log: Logger;
}

export type ServerState = 'starting' | 'up' | 'idle' | 'down' | 'closed';

type Waiter = { resolve: (c: Client) => void; reject: (e: Error) => void };

export class McpServerLink {
  readonly name: string;
  readonly #o: ServerLinkOptions;
  readonly #log: Logger;
  readonly #settings;
  #state: ServerState = 'starting';
  #client: Client | undefined;
  #connecting: Promise<Client> | undefined;
  /** What is served, by Toolbus tool name, with the canonical manifest it was announced with. */
  readonly #served = new Map<string, { key: string; server: ToolServer }>();
  /** Serializes announcing: a list change never overtakes another. */
  #serving: Promise<void> = Promise.resolve();
  #toolsKnown = false;
  #failures = 0;
  #upSince = 0;
  #restartTimer: NodeJS.Timeout | undefined;
  #idleTimer: NodeJS.Timeout | undefined;
  #active = 0;
  /** The client being closed on purpose (idle, flood, shutdown): its close is no death. */
  #closingOnPurpose = new WeakSet<Client>();
  #waiters: Waiter[] = [];
  /** ToolServers withdrawn and finishing their running calls. */
  readonly #stopping = new Set<Promise<void>>();

  constructor(o: ServerLinkOptions) {
    this.#o = o;
    this.name = o.name;
    this.#settings = o.config.toolbus;
    this.#log = o.log.child({ mcpServer: o.name });
  }

  #closed(): boolean {
    return this.#state === 'closed';
  }

  get state(): ServerState {
    return this.#state;
  }

  /** Connects (and announces the tools); on failure logs why and tries again with backoff. Never throws. */
  async start(): Promise<void> {
    await this.#connectOrRetry();
  }

  async close(): Promise<void> {
    this.#state = 'closed';
    clearTimeout(this.#restartTimer);
    clearTimeout(this.#idleTimer);
    for (const w of this.#waiters.splice(0)) w.reject(this.#unavailable('the provider is stopping'));
    await this.#withdraw();
    // Closing the connection ends the calls still running (they answer at once), so that the
    // ToolServers' wait for them is short.
    const client = this.#client;
    this.#client = undefined;
    if (client) {
      this.#closingOnPurpose.add(client);
      await client.close().catch(() => undefined);
    }
    await Promise.allSettled([...this.#stopping]);
  }

  // --- connecting ---------------------------------------------------------------------------

  async #connectOrRetry(): Promise<void> {
    if (this.#closed()) return;
    try {
      await this.#connect();
    } catch (e) {
      this.#failures++;
      const wait = backoffMs(this.#failures - 1, this.#o.restart ?? { minMs: 500, maxMs: 30_000 });
      this.#log.error(
        { err: { message: (e as Error).message }, retryInMs: wait, failures: this.#failures },
        `MCP server "${this.name}" is not available`,
      );
      if (this.#closed()) return;
      this.#state = 'down';
      clearTimeout(this.#restartTimer);
      this.#restartTimer = setTimeout(() => void this.#connectOrRetry(), wait);
    }
  }

  /** The connected client, connecting first when there is none (one attempt at a time). */
  #connect(): Promise<Client> {
    if (this.#client) return Promise.resolve(this.#client);
    this.#connecting ??= this.#open().finally(() => (this.#connecting = undefined));
    return this.#connecting;
  }

  async #open(): Promise<Client> {
    if (this.#closed()) throw this.#unavailable('the provider is stopping');
    this.#state = 'starting';
    const { config, name } = this.#o;
    const settings = this.#settings;
    const stderrTail: string[] = [];
    let firstError: string | undefined;
    const client = new Client(CLIENT_INFO, {
      // Toolbus runs tools unattended: there is no one to ask. Elicitation is declared only so
      // that a server asking gets a clean, protocol-level "decline" instead of an error; sampling
      // is not offered, and a server that asks anyway is answered "method not found".
      capabilities: { elicitation: { form: {} } },
      listChanged: {
        tools: {
          onChanged: (error, tools) => {
            if (error) {
              this.#log.warn(
                { err: { message: error.message } },
                `MCP server "${name}": re-reading its tools failed`,
              );
              return;
            }
            if (tools && this.#client === client) {
              this.#log.info(
                { tools: tools.length },
                `MCP server "${name}" changed its tools: announcing them again`,
              );
              this.#announce(tools);
            }
          },
        },
      },
    });
    client.setRequestHandler('elicitation/create', () => {
      this.#log.info(`MCP server "${name}" asked for user input (elicitation): declined`);
      return { action: 'decline' };
    });
    const guard = this.#floodGuard(client);
    client.onerror = (e) => {
      // A system error (spawn ENOENT, a refused connection) is what connect() rejects with too;
      // only a message that could not be read is "output that is not MCP".
      if (typeof (e as NodeJS.ErrnoException).code !== 'string')
        firstError ??= /^\s*\[/.test(e.message)
          ? 'JSON that is not a JSON-RPC message'
          : e.message.split('\n')[0];
      guard();
      this.#log.debug(
        { err: { message: clip(e.message, 300) } },
        `MCP server "${name}" sent something unusable`,
      );
    };
    client.onclose = () => this.#onClosed(client);

    const transport = isStdioServer(config)
      ? new StdioClientTransport({
          command: config.command,
          args: config.args,
          env: config.env,
          ...(config.cwd ? { cwd: config.cwd } : {}),
          stderr: 'pipe',
        })
      : new StreamableHTTPClientTransport(new URL(config.url), { requestInit: { headers: config.headers } });
    if (transport instanceof StdioClientTransport)
      this.#readStderr(transport.stderr as Readable | null, stderrTail);

    try {
      await client.connect(transport, { timeout: settings.startTimeoutMs });
      // Notifications count from here: the handshake is bounded by its timeout already.
      transport.onmessage = wrapCounting(transport.onmessage, guard);
      const { tools } = await client.listTools(undefined, { timeout: settings.startTimeoutMs });
      if (this.#closed()) throw this.#unavailable('the provider is stopping');
      this.#client = client;
      this.#upSince = Date.now();
      this.#state = 'up';
      this.#log.info({ tools: tools.length }, `MCP server "${name}" is up`);
      this.#announce(tools);
      for (const w of this.#waiters.splice(0)) w.resolve(client);
      this.#armIdle();
      return client;
    } catch (e) {
      if (!this.#closed()) this.#state = 'down';
      this.#closingOnPurpose.add(client);
      await client.close().catch(() => undefined);
      const why =
        e instanceof SdkError && e.code === SdkErrorCode.RequestTimeout
          ? `it did not complete the MCP handshake within ${settings.startTimeoutMs} ms`
          : (e as Error).message;
      const details = [
        firstError && firstError !== why ? `it wrote output that is not MCP: ${clip(firstError, 200)}` : '',
        stderrTail.length ? `its stderr ended: ${clip(stderrTail.join(' | '), 400)}` : '',
      ].filter(Boolean);
      throw new Error(
        `MCP server "${name}" did not start: ${why}${details.length ? `; ${details.join('; ')}` : ''}`,
        {
          cause: e,
        },
      );
    }
  }

  #readStderr(stream: Readable | null, tail: string[]): void {
    if (!stream) return;
    let partial = '';
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => {
      const lines = (partial + chunk).split('\n');
      partial = clip(lines.pop() ?? '', 1000);
      for (const line of lines) {
        if (!line.trim()) continue;
        tail.push(clip(line, 300));
        if (tail.length > STDERR_LINES) tail.shift();
        this.#log.debug({ stderr: clip(line, 300) }, `MCP server "${this.name}" stderr`);
      }
    });
  }

  /**
   * Counts notifications and unreadable messages per second; past the configured limit the
   * server is stopped as faulty (and restarted, when kept running) rather than let it starve the
   * provider and the other servers.
   */
  #floodGuard(client: Client): () => void {
    const limit = this.#settings.maxNotificationsPerSecond;
    let windowStart = Date.now();
    let count = 0;
    let tripped = false;
    return () => {
      const now = Date.now();
      if (now - windowStart >= 1_000) {
        windowStart = now;
        count = 0;
      }
      if (++count <= limit || tripped) return;
      tripped = true;
      this.#log.error(
        { limit },
        `MCP server "${this.name}" sent more than ${limit} notifications in a second: stopping it as faulty`,
      );
      void client.close().catch(() => undefined);
    };
  }

  #onClosed(client: Client): void {
    if (this.#client === client) this.#client = undefined;
    if (this.#closingOnPurpose.has(client) || this.#closed()) return;
    if (this.#state === 'starting') return; // #open reports it
    if (this.#settings.lifecycle === 'on-demand') {
      this.#state = 'idle';
      this.#log.warn(`MCP server "${this.name}" stopped; the next call starts it again`);
      return;
    }
    this.#state = 'down';
    // A server that stayed up a while starts its backoff afresh; one that dies soon after each
    // start keeps backing off (no restart loop at full speed).
    if (Date.now() - this.#upSince >= STABLE_MS) this.#failures = 0;
    this.#failures++;
    const wait = backoffMs(this.#failures - 1, this.#o.restart ?? { minMs: 500, maxMs: 30_000 });
    this.#log.error(
      { retryInMs: wait, failures: this.#failures },
      `MCP server "${this.name}" stopped: its tools are withdrawn until it is back`,
    );
    void this.#withdraw();
    clearTimeout(this.#restartTimer);
    this.#restartTimer = setTimeout(() => void this.#connectOrRetry(), wait);
  }

  // --- serving ------------------------------------------------------------------------------

  /**
   * Serves the listed tools, one ToolServer per tool: a tool whose manifest is unchanged keeps
   * serving without a gap (an on-demand restart, or a list change elsewhere); a removed or
   * changed tool is withdrawn first (its withdrawal is published before its new announcement),
   * its running calls finishing in the background.
   */
  #announce(tools: Tool[]): void {
    this.#serving = this.#serving.then(async () => {
      if (this.#closed()) return;
      const { definitions, refused } = toolDefinitions(this.name, this.#settings, tools, this.#call);
      for (const reason of refused) this.#log.error(reason);
      const wanted = new Map(
        definitions.map((d) => [d.name, { definition: d, key: canonicalJson(toManifest(d)) }]),
      );
      for (const [name, served] of this.#served) {
        if (wanted.get(name)?.key === served.key) continue;
        this.#served.delete(name);
        this.#track(served.server.stop());
      }
      for (const [name, { definition, key }] of wanted) {
        if (this.#served.has(name)) continue;
        try {
          const server = await serveTools(this.#o.nc, [definition], {
            workerId: `${this.#o.workerId}:${this.name}`,
            secret: this.#o.secret,
            ...(this.#o.announceIntervalMs !== undefined
              ? { announceIntervalMs: this.#o.announceIntervalMs }
              : {}),
            log: this.#log,
          });
          this.#served.set(name, { key, server });
        } catch (e) {
          this.#log.error(
            { err: { message: (e as Error).message } },
            `MCP server "${this.name}": ${name} cannot be served`,
          );
        }
      }
      this.#toolsKnown = true;
    });
  }

  #track(stopping: Promise<void>): void {
    const tracked = stopping.finally(() => this.#stopping.delete(tracked));
    this.#stopping.add(tracked);
  }

  /**
   * Withdraws every tool now (in announcing order). A stopped ToolServer publishes its withdrawal
   * at once and then waits for its running calls; that wait is kept in #stopping, not in the
   * announcing chain, so a call waiting for the server to come back never holds up its return.
   */
  #withdraw(): Promise<void> {
    return (this.#serving = this.#serving.then(() => {
      for (const { server } of this.#served.values()) this.#track(server.stop());
      this.#served.clear();
    }));
  }

  // --- calls --------------------------------------------------------------------------------

  /** The client for a call: now, after an on-demand start, or when a down server is back. */
  async #ready(signal: AbortSignal): Promise<Client> {
    if (this.#client) return this.#client;
    if (this.#closed()) throw this.#unavailable('the provider is stopping');
    if (this.#settings.lifecycle === 'on-demand' && this.#toolsKnown) {
      try {
        return await this.#connect();
      } catch (e) {
        throw new ToolRunError('TOOL_ERROR', clip((e as Error).message), { mcpServer: this.name });
      }
    }
    return new Promise<Client>((resolve, reject) => {
      const waiter: Waiter = {
        resolve: (c) => {
          signal.removeEventListener('abort', onAbort);
          resolve(c);
        },
        reject,
      };
      const onAbort = () => {
        this.#waiters = this.#waiters.filter((w) => w !== waiter);
        reject(signal.reason as Error);
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.#waiters.push(waiter);
    });
  }

  readonly #call: McpCall = async (tool, args, ctx, { idempotent, structured }) => {
    this.#active++;
    clearTimeout(this.#idleTimer);
    try {
      for (let attempt = 0; ; attempt++) {
        const client = await this.#ready(ctx.signal);
        let result: CallToolResult;
        try {
          result = await client.callTool(
            { name: tool, arguments: args },
            {
              signal: ctx.signal,
              // The result is checked once, by the tool's own zod output schema (OUTPUT_INVALID when
              // it does not match): the SDK's own check, which would throw a ProtocolError like any
              // server refusal, is turned off by handing it the tool without its output schema.
              toolDefinition: { name: tool, inputSchema: { type: 'object' } },
              // The worker's deadline (ctx.signal) ends the call; the SDK's own default (60 s) must not.
              timeout: MAX_TIMEOUT_MS,
              onprogress: (p) => reportProgress(ctx, p),
            },
          );
        } catch (e) {
          if (ctx.signal.aborted) throw ctx.signal.reason as Error;
          if (e instanceof SdkError && e.code === SdkErrorCode.ConnectionClosed) {
            if (idempotent && attempt < MAX_RERUNS && !this.#closed()) {
              this.#log.warn(
                { tool, executionId: ctx.executionId },
                `MCP server "${this.name}" stopped during a call: running it again (idempotent)`,
              );
              continue;
            }
            throw new ToolRunError(
              'INTERRUPTED',
              `MCP server "${this.name}" stopped while ${this.name}.${tool} was running` +
                (this.#closed()
                  ? '; the provider is stopping'
                  : idempotent
                    ? `; it ran ${attempt + 1} times, the most allowed`
                    : '; it is not configured idempotent, so it is not run again'),
              { mcpServer: this.name },
            );
          }
          if (e instanceof ProtocolError)
            throw new ToolRunError(
              'TOOL_ERROR',
              clip(`MCP server "${this.name}" refused ${tool}: ${e.message}`),
              {
                mcpServer: this.name,
                mcpCode: e.code,
              },
            );
          throw new ToolRunError(
            'TOOL_ERROR',
            clip(`MCP server "${this.name}", ${tool}: ${(e as Error).message}`),
            {
              mcpServer: this.name,
            },
          );
        }
        return this.#output(tool, result, structured);
      }
    } finally {
      this.#active--;
      this.#armIdle();
    }
  };

  #output(tool: string, result: CallToolResult, structured: boolean): unknown {
    const content = contentResult(Array.isArray(result.content) ? result.content : []);
    if (result.isError) {
      throw new ToolRunError(
        'TOOL_ERROR',
        clip(content.text || `MCP server "${this.name}" reported an error from ${tool} without a message`),
        { mcpServer: this.name },
      );
    }
    if (!structured) return content;
    if (result.structuredContent === undefined)
      throw new ToolOutputError(
        `${this.name}.${tool} declares an output schema but returned no structuredContent`,
      );
    return result.structuredContent;
  }

  /** On-demand servers close after `idleMs` without a call. */
  #armIdle(): void {
    if (this.#settings.lifecycle !== 'on-demand' || this.#active > 0 || !this.#client) return;
    clearTimeout(this.#idleTimer);
    this.#idleTimer = setTimeout(() => {
      const client = this.#client;
      if (!client || this.#active > 0) return;
      this.#client = undefined;
      this.#state = 'idle';
      this.#closingOnPurpose.add(client);
      this.#log.info(`MCP server "${this.name}" idle: stopped until the next call`);
      void client.close().catch(() => undefined);
    }, this.#settings.idleMs);
    this.#idleTimer.unref();
  }

  #unavailable(why: string): ToolRunError {
    return new ToolRunError('TOOL_ERROR', `MCP server "${this.name}" is not available: ${why}`, {
      mcpServer: this.name,
    });
  }
}

/** MCP progress (`progress` of an optional `total`) as Toolbus progress (a fraction and a message). */
function reportProgress(ctx: ToolContext, p: { progress: number; total?: number; message?: string }): void {
  const known = typeof p.total === 'number' && p.total > 0;
  const fraction = known ? p.progress / p.total! : 0;
  const message = p.message ?? (known ? `${p.progress} of ${p.total}` : `${p.progress}`);
  ctx.progress({ fraction, message });
}

/** A transport's message handler that also tells `count` of each notification (a message without id). */
function wrapCounting<M extends object, R extends unknown[]>(
  handler: ((message: M, ...rest: R) => void) | undefined,
  count: () => void,
): ((message: M, ...rest: R) => void) | undefined {
  if (!handler) return handler;
  return (message, ...rest) => {
    if (!('id' in message)) count();
    handler(message, ...rest);
  };
}

import { readFile, writeFile } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { parseArgs } from 'node:util';
import { isUserId } from '../../contracts/index.ts';
import { ConfigError } from '../../lib/config.ts';
import { createPool, type Pool } from '../../lib/db.ts';
import type { EventStore } from '../../lib/eventstore/types.ts';
import {
  createAuditLog,
  migrateAuditLog,
  type AuditAction,
  type AuditLog,
  type AuditOutcome,
} from './auditLog.ts';
import { CheckpointRefusedError, openCheckpoint, signCheckpoint, type Checkpoint } from './checkpoint.ts';
import { loadAuditorConfig, type AuditorConfig } from './config.ts';
import { EXIT } from './errors.ts';
import { Progress } from './progress.ts';
import { replayHistory, TIMELINE_HEADER, toNdjson, toTimelineLine, type ReplayRange } from './replay.ts';
import { describeReport, verifyHistory } from './verify.ts';
import { createEventStore } from '../../lib/eventstore/index.ts';

/**
 * The auditor's command line (docs/auditing.md):
 *   npx tsx services/auditor/cli.ts replay <userId> [range] [--format timeline|ndjson]
 *   npx tsx services/auditor/cli.ts verify <userId> [--checkpoint file.json] [--json]
 *   npx tsx services/auditor/cli.ts checkpoint <userId> [--checkpoint previous.json] [--out file.json]
 * Exit codes: 0 sound, 1 broken history, 2 usage error, 3 checkpoint refused, 4 store or audit log unreachable.
 */
const USAGE = `usage:
  cli.ts replay <userId> [--from-revision N] [--to-revision N] [--from ISO-TIME] [--to ISO-TIME]
                         [--format timeline|ndjson] [--quiet] [--progress]
  cli.ts verify <userId> [--checkpoint FILE] [--json] [--quiet] [--progress]
  cli.ts checkpoint <userId> [--checkpoint PREVIOUS-FILE] [--out FILE] [--quiet] [--progress]

Reads DATABASE_URL (or KURRENTDB_URL), AUDIT_SIGNING_KEY, and AUDITOR_ID (default: the OS user).
Exit codes: 0 sound, 1 history broken, 2 usage error, 3 checkpoint refused, 4 store or audit log unreachable.
`;

class UsageError extends Error {}

const OPTIONS = {
  'from-revision': { type: 'string' },
  'to-revision': { type: 'string' },
  from: { type: 'string' },
  to: { type: 'string' },
  format: { type: 'string' },
  checkpoint: { type: 'string' },
  out: { type: 'string' },
  json: { type: 'boolean' },
  quiet: { type: 'boolean', short: 'q' },
  progress: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

interface Command {
  action: AuditAction;
  userId: string;
  range: ReplayRange;
  format: 'timeline' | 'ndjson';
  checkpointFile: string | undefined;
  out: string | undefined;
  json: boolean;
  quiet: boolean;
  progress: boolean;
}

function parseCommand(argv: string[]): Command | 'help' {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const { values, positionals } = parsed;
  if (values.help) return 'help';
  const [action, userId, ...rest] = positionals;
  if (action !== 'replay' && action !== 'verify' && action !== 'checkpoint') {
    throw new UsageError(action ? `unknown command ${JSON.stringify(action)}` : 'a command is required');
  }
  if (!userId) throw new UsageError(`${action} needs a user id`);
  if (!isUserId(userId))
    throw new UsageError(`invalid user id ${JSON.stringify(userId)}: must match [A-Za-z0-9_-]{1,64}`);
  if (rest.length > 0) throw new UsageError(`unexpected argument ${JSON.stringify(rest[0])}`);
  const only = (names: Array<keyof typeof values>, forAction: AuditAction) => {
    if (action === forAction) return;
    for (const n of names)
      if (values[n] !== undefined) throw new UsageError(`--${String(n)} is not an option of ${action}`);
  };
  only(['from-revision', 'to-revision', 'from', 'to', 'format'], 'replay');
  only(['json'], 'verify');
  only(['out'], 'checkpoint');
  if (action === 'replay' && values.checkpoint !== undefined)
    throw new UsageError('--checkpoint is not an option of replay');

  const revision = (name: string, v: string | undefined) => {
    if (v === undefined) return undefined;
    if (!/^\d{1,15}$/.test(v)) throw new UsageError(`--${name} must be a non-negative integer`);
    return Number(v);
  };
  const time = (name: string, v: string | undefined) => {
    if (v === undefined) return undefined;
    const ms = Date.parse(v);
    if (!/^\d{4}-\d{2}-\d{2}/.test(v) || Number.isNaN(ms))
      throw new UsageError(`--${name} must be an ISO 8601 time`);
    return new Date(ms);
  };
  const range: ReplayRange = {};
  const fromRevision = revision('from-revision', values['from-revision']);
  const toRevision = revision('to-revision', values['to-revision']);
  const from = time('from', values.from);
  const to = time('to', values.to);
  if (fromRevision !== undefined) range.fromRevision = fromRevision;
  if (toRevision !== undefined) range.toRevision = toRevision;
  if (from) range.from = from;
  if (to) range.to = to;
  if (fromRevision !== undefined && toRevision !== undefined && fromRevision > toRevision) {
    throw new UsageError('--from-revision must not be after --to-revision');
  }
  if (from && to && from > to) throw new UsageError('--from must not be after --to');
  const format = values.format ?? 'timeline';
  if (format !== 'timeline' && format !== 'ndjson')
    throw new UsageError('--format must be timeline or ndjson');
  if (values.quiet && values.progress) throw new UsageError('--quiet and --progress exclude each other');
  return {
    action,
    userId,
    range,
    format,
    checkpointFile: values.checkpoint,
    out: values.out,
    json: values.json ?? false,
    quiet: values.quiet ?? false,
    progress: values.progress ?? false,
  };
}

function whoAmI(config: AuditorConfig): string {
  if (config.AUDITOR_ID) return config.AUDITOR_ID;
  try {
    return userInfo().username || 'unknown';
  } catch {
    return 'unknown';
  }
}

/** Buffered stdout that waits for the pipe to drain, so a slow reader slows the walk instead of filling memory. */
class Output {
  private buffer = '';
  private failed: Error | null = null;
  constructor(private readonly stream: NodeJS.WriteStream = process.stdout) {
    stream.on('error', (e: Error) => {
      this.failed = e;
    });
  }
  async write(s: string): Promise<void> {
    this.buffer += s;
    if (this.buffer.length >= 64 * 1024) await this.flush();
  }
  async flush(): Promise<void> {
    this.check();
    if (this.buffer.length === 0) return;
    const chunk = this.buffer;
    this.buffer = '';
    if (!this.stream.write(chunk)) {
      await new Promise<void>((resolve) => {
        const done = () => {
          this.stream.off('drain', done);
          this.stream.off('error', done);
          this.stream.off('close', done);
          resolve();
        };
        this.stream.on('drain', done);
        this.stream.on('error', done);
        this.stream.on('close', done);
      });
    }
    this.check();
  }
  private check(): void {
    if (this.failed) throw this.failed;
  }
}

const say = (quiet: boolean, message: string) => {
  if (!quiet) process.stderr.write(`${message}\n`);
};

async function run(argv: string[]): Promise<number> {
  let command: Command | 'help';
  let config: AuditorConfig;
  try {
    command = parseCommand(argv);
    if (command === 'help') {
      process.stdout.write(USAGE);
      return EXIT.ok;
    }
    config = loadAuditorConfig();
  } catch (e) {
    if (e instanceof UsageError || e instanceof ConfigError) {
      process.stderr.write(`error: ${e.message}\n\n${USAGE}`);
      return EXIT.usage;
    }
    throw e;
  }
  const cmd = command;

  let rawCheckpoint: unknown;
  if (cmd.checkpointFile !== undefined) {
    try {
      rawCheckpoint = JSON.parse(await readFile(cmd.checkpointFile, 'utf8'));
    } catch (e) {
      process.stderr.write(`error: cannot read checkpoint ${cmd.checkpointFile}: ${(e as Error).message}\n`);
      return EXIT.usage;
    }
  }

  let pool: Pool | null = null;
  let store: EventStore | null = null;
  let auditLog: AuditLog;
  let auditId: number;
  try {
    pool = createPool(config.DATABASE_URL, { max: 2, application: 'toolbus-auditor-cli' });
    await migrateAuditLog(pool);
    store = await createEventStore(config, { poolSize: 4 });
    auditLog = createAuditLog(pool, (e) =>
      process.stderr.write(`warning: audit log not completed: ${e.message}\n`),
    );
    auditId = await auditLog.begin({
      actor: whoAmI(config),
      actorRoles: [],
      via: 'cli',
      action: cmd.action,
      subjectUser: cmd.userId,
      range: {
        ...(cmd.action === 'replay' ? rangeJson(cmd.range, cmd.format) : {}),
        ...(cmd.checkpointFile ? { againstCheckpoint: true } : {}),
      },
    });
  } catch (e) {
    process.stderr.write(`error: cannot reach the event store or the audit log: ${(e as Error).message}\n`);
    await store?.close().catch(() => undefined);
    await pool?.end().catch(() => undefined);
    return EXIT.failure;
  }

  let outcome: AuditOutcome = 'error';
  let events: number | null = null;
  let detail: unknown;
  try {
    const progress = new Progress(`${cmd.action} user-${cmd.userId}`, {
      enabled: cmd.progress || (!cmd.quiet && process.stderr.isTTY === true),
    });
    progress.start();
    if (cmd.action === 'replay') {
      // Ctrl-C ends a replay early but cleanly, so that its audit_log row says 'aborted'.
      process.once('SIGINT', () => (interrupted = true));
      const out = new Output();
      let count = 0;
      if (cmd.format === 'timeline') await out.write(TIMELINE_HEADER);
      for await (const item of replayHistory(store, cmd.userId, cmd.range)) {
        await out.write(cmd.format === 'ndjson' ? toNdjson(item) : toTimelineLine(item));
        count++;
        progress.tick(item.revision);
        if (interrupted) break;
      }
      await out.flush();
      progress.done();
      events = count;
      outcome = interrupted ? 'aborted' : 'ok';
      say(cmd.quiet, `replayed ${count} events of user ${cmd.userId}`);
      return interrupted ? 130 : EXIT.ok;
    }

    let checkpoint: Checkpoint | null = null;
    if (rawCheckpoint !== undefined) {
      try {
        checkpoint = openCheckpoint(rawCheckpoint, config.AUDIT_SIGNING_KEY, cmd.userId);
      } catch (e) {
        if (!(e instanceof CheckpointRefusedError)) throw e;
        outcome = 'refused';
        detail = { reason: e.message };
        process.stderr.write(`checkpoint refused: ${e.message}\n`);
        return EXIT.checkpointRefused;
      }
    }
    const report = await verifyHistory(store, cmd.userId, { checkpoint, onEvent: (r) => progress.tick(r) });
    progress.done();
    events = report.events;
    outcome = report.ok ? 'ok' : 'broken';
    if (report.break) detail = { break: report.break };

    if (cmd.action === 'verify') {
      process.stdout.write(cmd.json ? `${JSON.stringify(report, null, 2)}\n` : `${describeReport(report)}\n`);
      return report.ok ? EXIT.ok : EXIT.broken;
    }
    // checkpoint
    if (!report.ok) {
      process.stderr.write(`${describeReport(report)}\nno checkpoint issued\n`);
      return EXIT.broken;
    }
    if (report.lastEventId === null) {
      process.stderr.write(`user ${cmd.userId} has no events: nothing to checkpoint\n`);
      return EXIT.usage;
    }
    const signed = signCheckpoint(
      {
        userId: cmd.userId,
        stream: report.stream,
        revision: report.lastRevision,
        eventId: report.lastEventId,
        hash: report.lastHash,
        events: report.events,
        issuedAt: report.finishedAt,
        issuedBy: whoAmI(config),
      },
      config.AUDIT_SIGNING_KEY,
    );
    const text = `${JSON.stringify(signed, null, 2)}\n`;
    if (cmd.out) await writeFile(cmd.out, text, { mode: 0o644 });
    else process.stdout.write(text);
    say(
      cmd.quiet,
      `${describeReport(report)}\ncheckpoint at revision ${signed.revision}${cmd.out ? ` written to ${cmd.out}` : ''}`,
    );
    return EXIT.ok;
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'EPIPE') {
      outcome = 'aborted';
      return EXIT.ok;
    }
    detail = { error: err.message };
    process.stderr.write(`error: ${err.message}\n`);
    return EXIT.failure;
  } finally {
    await auditLog.end(auditId, outcome, events, detail);
    await store.close().catch(() => undefined);
    await pool.end().catch(() => undefined);
  }
}

function rangeJson(range: ReplayRange, format: string): Record<string, unknown> {
  return {
    ...(range.fromRevision !== undefined ? { fromRevision: range.fromRevision } : {}),
    ...(range.toRevision !== undefined ? { toRevision: range.toRevision } : {}),
    ...(range.from ? { from: range.from.toISOString() } : {}),
    ...(range.to ? { to: range.to.toISOString() } : {}),
    format,
  };
}

let interrupted = false;

run(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`error: ${(e as Error).stack ?? String(e)}\n`);
    process.exitCode = EXIT.failure;
  },
);

import type { FastifyInstance } from 'fastify';
import { tokenVerifierFromConfig } from '../../lib/auth.ts';
import { createPool, type Pool } from '../../lib/db.ts';
import type { EventStore } from '../../lib/eventstore/types.ts';
import { createHttpApp } from '../../lib/http.ts';
import { createAuditLog, migrateAuditLog } from './auditLog.ts';
import type { UserTokenConfig } from '../../lib/config.ts';
import type { AuditorConfig } from './config.ts';
import { auditRoutes } from './routes.ts';
import { createEventStore } from '../../lib/eventstore/index.ts';

export type AuditorServerConfig = Pick<
  AuditorConfig,
  'DATABASE_URL' | 'KURRENTDB_URL' | 'AUDIT_SIGNING_KEY' | 'HOST' | 'AUDITOR_PORT' | 'LOG_LEVEL'
> &
  UserTokenConfig;

export interface Auditor {
  app: FastifyInstance;
  store: EventStore;
  pool: Pool;
  /** Base URL once listening (startAuditor); null for buildAuditor. */
  url: string | null;
  close(): Promise<void>;
}

/** The auditor's HTTP app, ready for `inject` (not listening): audit_log migrated, routes registered. */
export async function buildAuditor(config: AuditorServerConfig): Promise<Auditor> {
  const pool = createPool(config.DATABASE_URL, { max: 4, application: 'toolbus-auditor' });
  let store: EventStore | null = null;
  try {
    await migrateAuditLog(pool);
    store = await createEventStore(config, { poolSize: 4 });
    const openStore = store;
    const app = createHttpApp({
      service: 'auditor',
      logLevel: config.LOG_LEVEL,
      // Stopping cuts open connections (a replay in progress ends as 'aborted' in audit_log)
      // instead of waiting up to the keep-alive timeout for clients to let go.
      fastify: { forceCloseConnections: true },
      checks: {
        eventstore: () => openStore.ping(),
        postgres: async () => void (await pool.query('select 1')),
      },
    });
    const auditLog = createAuditLog(pool, (e) => app.log.error({ err: e }, 'audit log write failed'));
    await app.register(auditRoutes, {
      store,
      auditLog,
      tokens: tokenVerifierFromConfig(config),
      signingKey: config.AUDIT_SIGNING_KEY,
    });
    await app.ready();
    let closed = false;
    return {
      app,
      store,
      pool,
      url: null,
      async close() {
        if (closed) return;
        closed = true;
        await app.close();
        await openStore.close();
        await pool.end();
      },
    };
  } catch (e) {
    await store?.close().catch(() => undefined);
    await pool.end().catch(() => undefined);
    throw e;
  }
}

/** buildAuditor, listening on HOST:AUDITOR_PORT (0 picks a free port). */
export async function startAuditor(
  config: AuditorServerConfig,
): Promise<Auditor & { url: string; port: number }> {
  const auditor = await buildAuditor(config);
  try {
    await auditor.app.listen({ host: config.HOST, port: config.AUDITOR_PORT });
  } catch (e) {
    await auditor.close();
    throw e;
  }
  const address = auditor.app.server.address();
  const port = typeof address === 'object' && address ? address.port : config.AUDITOR_PORT;
  return { ...auditor, url: `http://${config.HOST}:${port}`, port };
}

import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

export interface DispatcherMetrics {
  executions: Counter<'tool' | 'outcome'>;
  duration: Histogram<'tool' | 'outcome'>;
  inFlight: Gauge;
  rateLimited: Counter<'limit'>;
  redisErrors: Counter<'op'>;
  lostSlots: Counter;
  conflicts: Counter;
  relayed: Counter;
  refusedUnauthenticated: Counter;
  redeliveries: Counter<'action'>;
  cancellations: Counter<'result'>;
  intakeQueued: Gauge;
  intakeWait: Histogram;
  shed: Counter;
  lookups: Counter<'result'>;
  lookupsInFlight: Gauge;
  approvals: Counter<'event'>;
}

/** The dispatcher's Prometheus metrics, registered on the app's registry (`/metrics`). */
export function createMetrics(registry: Registry): DispatcherMetrics {
  return {
    executions: new Counter({
      name: 'toolbus_executions_total',
      help: 'Requests answered with a terminal answer, by tool and outcome (completed, cached or the error code)',
      labelNames: ['tool', 'outcome'],
      registers: [registry],
    }),
    duration: new Histogram({
      name: 'toolbus_execution_duration_seconds',
      help: 'From the request reaching the dispatcher to its terminal answer',
      labelNames: ['tool', 'outcome'],
      buckets: [0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
      registers: [registry],
    }),
    inFlight: new Gauge({
      name: 'toolbus_executions_in_flight',
      help: 'Requests this dispatcher is handling right now',
      registers: [registry],
    }),
    rateLimited: new Counter({
      name: 'toolbus_rate_limited_total',
      help: 'Requests refused with RATE_LIMITED, by limit (rate, concurrency or approvals)',
      labelNames: ['limit'],
      registers: [registry],
    }),
    redisErrors: new Counter({
      name: 'toolbus_redis_errors_total',
      help: 'Redis calls that failed (the dispatcher then fails open), by operation',
      labelNames: ['op'],
      registers: [registry],
    }),
    lostSlots: new Counter({
      name: 'toolbus_slots_lost_total',
      help: "Concurrency slots a renewal found gone (Redis restarted empty, or renewed past the lease) with the user at the limit, counted at each renewal: those calls run outside the user's limit",
      registers: [registry],
    }),
    conflicts: new Counter({
      name: 'toolbus_append_conflicts_total',
      help: 'Appends refused for a wrong expected revision (another writer), then retried',
      registers: [registry],
    }),
    relayed: new Counter({
      name: 'toolbus_events_relayed_total',
      help: 'Committed events the event relay of this instance published on events.user.<id>',
      registers: [registry],
    }),
    refusedUnauthenticated: new Counter({
      name: 'toolbus_unauthenticated_total',
      help: 'Requests refused for a missing, expired or invalid token (not recorded)',
      registers: [registry],
    }),
    redeliveries: new Counter({
      name: 'toolbus_recoveries_total',
      help: 'Executions found unfinished or failing, by what was done (rerun, interrupted, deferred, given_up)',
      labelNames: ['action'],
      registers: [registry],
    }),
    cancellations: new Counter({
      name: 'toolbus_cancellations_total',
      help: 'Cancel requests answered, by result (cancelled, completed, failed, executing, unknown, forbidden, unavailable)',
      labelNames: ['result'],
      registers: [registry],
    }),
    intakeQueued: new Gauge({
      name: 'toolbus_intake_queued',
      help: 'Requests pulled by this dispatcher and waiting for a slot (their user is at its share)',
      registers: [registry],
    }),
    shed: new Counter({
      name: 'toolbus_requests_shed_total',
      help: 'Requests answered OVERLOADED unrun: they waited in the intake longer than INTAKE_MAX_WAIT_MS',
      registers: [registry],
    }),
    intakeWait: new Histogram({
      name: 'toolbus_intake_wait_seconds',
      help: 'From a request being pulled to it being started',
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers: [registry],
    }),
    lookups: new Counter({
      name: 'toolbus_answer_lookups_total',
      help: 'Answer lookups (toolbus.answers) by result: answered, pending (no terminal answer yet), refused (token, user or body), overloaded (over the bound), deadline (past it), failed',
      labelNames: ['result'],
      registers: [registry],
    }),
    lookupsInFlight: new Gauge({
      name: 'toolbus_answer_lookups_in_flight',
      help: 'Answer lookups this dispatcher is serving now (including those answered at their deadline whose store work goes on)',
      registers: [registry],
    }),
    approvals: new Counter({
      name: 'toolbus_approvals_total',
      help: 'Approval events this dispatcher recorded: requested, approved, denied, expired',
      labelNames: ['event'],
      registers: [registry],
    }),
  };
}

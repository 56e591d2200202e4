import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

/** The projector's Prometheus metrics, registered on the app's registry. */
export interface ProjectorMetrics {
  applied: Counter<'type'>;
  skipped: Counter<'kind'>;
  batchDuration: Histogram;
  batchSize: Histogram;
  batchFailures: Counter;
  lagEvents: Gauge;
  lagSeconds: Gauge;
  active: Gauge;
}

export function createProjectorMetrics(registry: Registry): ProjectorMetrics {
  const registers = [registry];
  return {
    applied: new Counter({
      name: 'toolbus_projector_events_applied_total',
      help: 'Events applied to the read models, by event type.',
      labelNames: ['type'],
      registers,
    }),
    skipped: new Counter({
      name: 'toolbus_projector_events_skipped_total',
      help: 'Events skipped (unknown type, newer schema version, invalid, against the life cycle).',
      labelNames: ['kind'],
      registers,
    }),
    batchDuration: new Histogram({
      name: 'toolbus_projector_batch_duration_seconds',
      help: 'Time to apply one batch and commit it with its checkpoint.',
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers,
    }),
    batchSize: new Histogram({
      name: 'toolbus_projector_batch_events',
      help: 'Events per committed batch.',
      buckets: [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000],
      registers,
    }),
    batchFailures: new Counter({
      name: 'toolbus_projector_batch_failures_total',
      help: 'Batches rolled back (database error, checkpoint moved by another writer); they are retried.',
      registers,
    }),
    lagEvents: new Gauge({
      name: 'toolbus_projector_lag_events',
      help: 'User-stream events in the store after the checkpoint (counted up to PROJECTOR_LAG_CAP).',
      registers,
    }),
    lagSeconds: new Gauge({
      name: 'toolbus_projector_lag_seconds',
      help: 'Age of the oldest event not yet applied; 0 when caught up.',
      registers,
    }),
    active: new Gauge({
      name: 'toolbus_projector_active',
      help: '1 while this instance holds the projection lock and applies events, 0 on standby.',
      registers,
    }),
  };
}

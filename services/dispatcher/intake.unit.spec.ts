import { JetStreamApiError } from '@nats-io/jetstream';
import t from 'tap';
import { IntakeCreateError, isJetStreamForming } from './intake.ts';

const apiError = (err_code: number, description: string) =>
  new JetStreamApiError({ code: 500, err_code, description });

t.test('a cluster still forming is waited for; other refusals stop the start', async (t) => {
  t.ok(isJetStreamForming(apiError(10005, 'no suitable peers for placement')), 'too few nodes joined');
  t.ok(isJetStreamForming(apiError(10008, 'JetStream system temporarily unavailable')), 'no meta leader');
  t.ok(
    isJetStreamForming(new IntakeCreateError('stream', apiError(10005, 'no suitable peers for placement'))),
    'also when wrapped by ensureIntake',
  );
  const timeout = new Error('timeout');
  timeout.name = 'TimeoutError';
  t.ok(isJetStreamForming(timeout), 'an API request nobody answered');
  t.notOk(isJetStreamForming(apiError(10065, 'subjects overlap with an existing stream')), 'subjects taken');
  t.notOk(isJetStreamForming(new Error('jetstream is not enabled')), 'no JetStream at all');
  t.notOk(isJetStreamForming(new Error('Permissions Violation for Publish to "$JS.API.>"')), 'no permission');
});

import { connect, type NatsConnection } from '@nats-io/transport-node';

export type { NatsConnection };

/** Connects and keeps reconnecting for ever: a NATS restart is an interruption, not an end. */
export function connectNats(url: string, name: string): Promise<NatsConnection> {
  return connect({
    servers: url,
    name,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
    pingInterval: 5_000,
  });
}

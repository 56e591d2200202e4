import { Counter, Gauge, type Registry } from 'prom-client';

export interface GatewayMetrics {
  /** `tools/call`s by how they ended: completed, the error code, task, refused (a JSON-RPC error). */
  calls: Counter<'outcome'>;
  /** Calls waiting for their answer now. */
  inFlight: Gauge;
  /** Requests to /mcp refused before the SDK: 401 or 403. */
  refused: Counter<'status'>;
}

/** The gateway's Prometheus metrics, on the app's registry (`/metrics`). */
export function createMetrics(registry: Registry): GatewayMetrics {
  return {
    calls: new Counter({
      name: 'toolbus_mcp_calls_total',
      help: 'MCP tools/call requests by outcome (completed, the error code, task, or refused)',
      labelNames: ['outcome'],
      registers: [registry],
    }),
    inFlight: new Gauge({
      name: 'toolbus_mcp_calls_in_flight',
      help: 'MCP tools/call requests waiting for their answer',
      registers: [registry],
    }),
    refused: new Counter({
      name: 'toolbus_mcp_refused_total',
      help: 'Requests to /mcp refused before MCP: 401 (no or bad token) or 403 (Origin)',
      labelNames: ['status'],
      registers: [registry],
    }),
  };
}

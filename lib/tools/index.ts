export * from './errors.ts';
export * from './define.ts';
export * from './registry.ts';
export * from './remote.ts';
export * from './redact.ts';

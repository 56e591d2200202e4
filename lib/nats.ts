import { readFileSync } from 'node:fs';
import { fromSeed } from '@nats-io/nkeys';
import {
  connect,
  createInbox,
  credsAuthenticator,
  nkeyAuthenticator,
  TimeoutError,
  type Authenticator,
  type ConnectionOptions,
  type NatsConnection,
} from '@nats-io/transport-node';
import { inboxPrefixOf, isIdentityId } from '../contracts/index.ts';

export type { NatsConnection };

/**
 * How a part of Toolbus proves who it is to NATS: at most one of an nkey seed, a creds file
 * (JWT + seed, for operator/account deployments), a user and password, or a token; and TLS.
 * Every field comes from configuration (`natsCredentialsFromConfig`).
 */
export interface NatsCredentials {
  nkeySeed?: string;
  credsFile?: string;
  user?: string;
  password?: string;
  token?: string;
  tls?: { caFile?: string; certFile?: string; keyFile?: string };
  /**
   * The identity's id on the bus: names its inbox (`_INBOX.<id>`) and, for agents, the last token
   * of its request subject. Default: the nkey's public key, else the user name, else `anonymous`.
   * The server's permissions are written for this id (`permissionsOf` in scripts/nats-auth.ts).
   */
  identity?: string;
}

/** The id that `credentials` give a connection (see `NatsCredentials.identity`). */
export function identityOf(credentials: NatsCredentials = {}): string {
  if (credentials.identity) return credentials.identity;
  if (credentials.nkeySeed) return publicKeyOfSeed(credentials.nkeySeed);
  if (credentials.credsFile) return publicKeyOfCreds(readFileSync(credentials.credsFile, 'utf8'));
  if (credentials.user && isIdentityId(credentials.user)) return credentials.user;
  return 'anonymous';
}

export function publicKeyOfSeed(seed: string): string {
  return fromSeed(new TextEncoder().encode(seed.trim())).getPublicKey();
}

/** The user's public key in a creds file: the seed's, which is also its JWT's subject. */
function publicKeyOfCreds(creds: string): string {
  const seed = /-----BEGIN USER NKEY SEED-----\s*(SU[A-Z2-7]+)\s*/.exec(creds)?.[1];
  if (!seed) throw new Error('NATS_CREDS: no user nkey seed in the creds file');
  return publicKeyOfSeed(seed);
}

function authenticatorOf(c: NatsCredentials): Partial<ConnectionOptions> {
  const given = [c.nkeySeed, c.credsFile, c.user, c.token].filter((v) => v !== undefined).length;
  if (given > 1) throw new Error('NATS credentials: give one of an nkey seed, a creds file, a user, a token');
  let authenticator: Authenticator | undefined;
  if (c.nkeySeed) authenticator = nkeyAuthenticator(new TextEncoder().encode(c.nkeySeed.trim()));
  if (c.credsFile) authenticator = credsAuthenticator(readFileSync(c.credsFile));
  const options: Partial<ConnectionOptions> = {};
  if (authenticator) options.authenticator = authenticator;
  if (c.user !== undefined) {
    options.user = c.user;
    if (c.password !== undefined) options.pass = c.password;
  }
  if (c.token !== undefined) options.token = c.token;
  if (c.tls) {
    options.tls = {
      ...(c.tls.caFile ? { caFile: c.tls.caFile } : {}),
      ...(c.tls.certFile ? { certFile: c.tls.certFile } : {}),
      ...(c.tls.keyFile ? { keyFile: c.tls.keyFile } : {}),
    };
  }
  return options;
}

/** Each connection's identity id, as `connectNats` made it. */
const identities = new WeakMap<NatsConnection, string>();

/**
 * The servers of a NATS_URL: one URL, or several separated by commas (the nodes of a cluster).
 */
export const natsServers = (url: string): string[] =>
  url
    .split(',')
    .map((u) => u.trim())
    .filter((u) => u.length > 0);

/**
 * NATS_URL fit for a log line: a server's user and password (or token) in its URL are left out,
 * in every one of a cluster's URLs.
 */
export const natsUrlForLog = (url: string): string =>
  natsServers(url)
    .map((u) => u.replace(/^([a-z]+:\/\/)[^/?#]*@/i, '$1[REDACTED]@'))
    .join(',');

/**
 * Connects as `credentials` and keeps reconnecting for ever: a NATS restart, or a server too busy
 * to authenticate a reconnect in time, is an interruption, not an end. `url` may name several servers, comma-separated (a cluster's nodes): it connects to
 * one of them and moves to another when that one is lost. The connection's inbox prefix is
 * `_INBOX.<identity>`, the only inbox its identity may subscribe to on a server with Toolbus's
 * authorization.
 */
export async function connectNats(
  url: string,
  name: string,
  credentials: NatsCredentials = {},
): Promise<NatsConnection> {
  const identity = identityOf(credentials);
  for (let attempt = 1; ; attempt++) {
    try {
      const nc = await connect({
        servers: natsServers(url),
        name,
        maxReconnectAttempts: -1,
        reconnectTimeWait: 250,
        // nats.js gives up reconnecting after two authentication errors in a row, and a server too
        // busy to read the CONNECT in time (its "Authentication Timeout") is one: under overload,
        // connections closed for good. A refused identity keeps failing and the service stays not ready.
        ignoreAuthErrorAbort: true,
        pingInterval: 5_000,
        inboxPrefix: inboxPrefixOf(identity),
        ...authenticatorOf(credentials),
      });
      identities.set(nc, identity);
      return nc;
    } catch (e) {
      // A first connection that gets no answer in nats.js's 20 s (a server or a machine too busy
      // to answer: seen once under a heavy CI load) is tried again; a refusal (authentication,
      // nothing listening) fails at once, as it should.
      if (!(e instanceof TimeoutError) || attempt >= FIRST_CONNECT_ATTEMPTS) throw e;
    }
  }
}

/** How many times a first connection that timed out is tried before the start fails. */
const FIRST_CONNECT_ATTEMPTS = 3;

/** A readiness check of a connection: fails when it is closed or the server does not answer a flush. */
export async function natsReady(nc: NatsConnection): Promise<void> {
  if (nc.isClosed()) throw new Error('closed');
  await nc.flush();
}

/** The identity id of a connection made by `connectNats` (`anonymous` for any other). */
export const connectionIdentity = (nc: NatsConnection): string => identities.get(nc) ?? 'anonymous';

/** A new inbox subject under the connection's own prefix. */
export const inboxFor = (nc: NatsConnection): string => createInbox(inboxPrefixOf(connectionIdentity(nc)));

/** The NATS_* variables of `lib/config.ts` as credentials. */
export function natsCredentialsFromConfig(config: {
  NATS_NKEY_SEED?: string | undefined;
  NATS_NKEY_SEED_FILE?: string | undefined;
  NATS_CREDS?: string | undefined;
  NATS_USER?: string | undefined;
  NATS_PASSWORD?: string | undefined;
  NATS_TOKEN?: string | undefined;
  NATS_TLS_CA?: string | undefined;
  NATS_TLS_CERT?: string | undefined;
  NATS_TLS_KEY?: string | undefined;
  NATS_IDENTITY?: string | undefined;
}): NatsCredentials {
  if (config.NATS_NKEY_SEED && config.NATS_NKEY_SEED_FILE) {
    throw new Error('NATS_NKEY_SEED and NATS_NKEY_SEED_FILE: give one of them');
  }
  const seed =
    config.NATS_NKEY_SEED ??
    (config.NATS_NKEY_SEED_FILE ? readFileSync(config.NATS_NKEY_SEED_FILE, 'utf8').trim() : undefined);
  const tls =
    config.NATS_TLS_CA || config.NATS_TLS_CERT || config.NATS_TLS_KEY
      ? {
          ...(config.NATS_TLS_CA ? { caFile: config.NATS_TLS_CA } : {}),
          ...(config.NATS_TLS_CERT ? { certFile: config.NATS_TLS_CERT } : {}),
          ...(config.NATS_TLS_KEY ? { keyFile: config.NATS_TLS_KEY } : {}),
        }
      : undefined;
  return {
    ...(seed ? { nkeySeed: seed } : {}),
    ...(config.NATS_CREDS ? { credsFile: config.NATS_CREDS } : {}),
    ...(config.NATS_USER ? { user: config.NATS_USER } : {}),
    ...(config.NATS_PASSWORD ? { password: config.NATS_PASSWORD } : {}),
    ...(config.NATS_TOKEN ? { token: config.NATS_TOKEN } : {}),
    ...(tls ? { tls } : {}),
    ...(config.NATS_IDENTITY ? { identity: config.NATS_IDENTITY } : {}),
  };
}

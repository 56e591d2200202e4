/**
 * The stack's own NATS proves itself (scripts/localTls.ts): a client given the stack's CA connects
 * to it; a client without the CA does not; and a process that takes the port while nats-server is
 * down, with a certificate of its own or none, gets no CONNECT (no nkey signature, no token)
 * from a client that trusts the stack's CA.
 */
import { spawn } from 'node:child_process';
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { connect, nkeyAuthenticator } from '@nats-io/transport-node';
import t from 'tap';
import { freePort, waitForPort } from '../test/support/ports.ts';
import { localSetup } from './local.ts';
import { natsServerBinary } from './local.ts';
import { localTls } from './localTls.ts';

const dir = t.testdir();
const port = await freePort();
const setup = await localSetup({ dir, natsPort: port, tls: true });
const tls = setup.natsTls!;
const seed = new TextEncoder().encode(setup.identities['agent']!.seed);

/** Runs nats-server with `config` on `port` until the test ends (or `stop`). */
async function natsServer(config: string) {
  const child = spawn(natsServerBinary(), ['-c', config], { stdio: 'ignore' });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  t.teardown(() => child.kill('SIGKILL'));
  await waitForPort(port, 15_000);
  return {
    stop: async () => {
      child.kill('SIGKILL');
      await exited;
    },
  };
}

/** What a client does that trusts the stack's CA, or (`ca: false`) nothing but the system's. */
const attempt = (ca: boolean) =>
  connect({
    servers: `nats://127.0.0.1:${port}`,
    authenticator: nkeyAuthenticator(seed),
    reconnect: false,
    timeout: 10_000,
    ...(ca ? { tls: { caFile: tls.caFile } } : {}),
  });

t.test('the certificates: signed by the CA, for loopback, the key private; kept across starts', async (t) => {
  const ca = new X509Certificate(await readFile(tls.caFile));
  const server = new X509Certificate(await readFile(tls.certFile));
  t.ok(server.verify(ca.publicKey), "the server's certificate is the CA's");
  t.ok(server.checkIP('127.0.0.1') && server.checkHost('localhost'), 'for 127.0.0.1 and localhost');
  t.equal((await stat(tls.keyFile)).mode & 0o777, 0o600, 'the key is the owner’s only');
  t.match(await readFile(setup.natsConfig, 'utf8'), /tls \{[^}]*cert_file/, 'nats.conf requires TLS');
  const first = await readFile(tls.certFile, 'utf8');
  const again = await localTls(join(dir, 'nats'));
  t.equal(await readFile(again.certFile, 'utf8'), first, 'kept');
  // Elsewhere: certificates made for three years on are not valid yet today.
  const elsewhere = t.testdir();
  const made = await readFile((await localTls(elsewhere)).certFile, 'utf8');
  const later = await localTls(elsewhere, new Date(Date.now() + 3 * 365 * 86_400_000));
  t.not(await readFile(later.certFile, 'utf8'), made, 'made again when about to expire');
  // A key that is not the certificate's (a start stopped between writing the two): made again.
  const halfway = t.testdir();
  const broken = await localTls(halfway);
  const other = await localTls(t.testdir());
  await writeFile(broken.keyFile, await readFile(other.keyFile));
  const mended = await localTls(halfway);
  t.ok(
    new X509Certificate(await readFile(mended.certFile)).checkPrivateKey(
      createPrivateKey(await readFile(mended.keyFile)),
    ),
    'a key that does not match its certificate: both made again',
  );
});

t.test('a client that trusts the CA connects; one that does not is refused', async (t) => {
  const server = await natsServer(setup.natsConfig);
  const nc = await attempt(true);
  await nc.flush();
  t.ok(nc.info?.tls_required, 'over TLS');
  await nc.close();
  await t.rejects(attempt(false), /certificate/, 'a certificate no public CA signed: refused');
  await server.stop();
});

t.test('an impostor on the port gets nothing from a client that trusts the CA', async (t) => {
  // With a certificate of its own (a nats-server with another CA, admitting anyone).
  const otherDir = t.testdir();
  const other = await localSetup({ dir: otherDir, natsPort: port, tls: true });
  const impostor = await natsServer(other.natsConfig);
  await t.rejects(attempt(true), /certificate|signature/, 'another CA’s certificate: refused');
  await impostor.stop();

  // Without TLS, reading whatever the client sends after its INFO.
  const received: string[] = [];
  const plain = createServer((socket: Socket) => {
    socket.on('data', (d: Buffer) => received.push(d.toString()));
    socket.write(
      `INFO ${JSON.stringify({ server_id: 'x', version: '2.9.10', proto: 1, headers: true, max_payload: 1048576, auth_required: true, nonce: 'abc' })}\r\n`,
    );
  });
  await new Promise<void>((resolve) => plain.listen(port, '127.0.0.1', resolve));
  t.teardown(() => plain.close());
  await t.rejects(attempt(true), /TLS/i, 'a server without TLS: refused');
  t.notMatch(received.join(''), /CONNECT/, 'no CONNECT (no nkey signature) went to it');
});

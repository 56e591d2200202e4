/**
 * TLS for the stack's own nats-server (decision 0038): a certificate authority of this stack alone
 * and the server's certificate it signs, made once into `.toolbus/nats/tls/` and kept. Every part
 * of the stack, and every agent given `ca.pem`, checks that the server it reached holds the key:
 * a process that takes the NATS port while nats-server is down (a crash, a restart) cannot pass
 * for it, so no token, argument or nkey signature goes to it.
 *
 * The CA's key signs the server's certificate and is then thrown away: nothing can be signed
 * with it again, so `ca.pem` trusts this one server certificate and no other.
 */
import { createPrivateKey, X509Certificate as NodeX509Certificate, webcrypto } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
// @peculiar/x509 2 resolves its parts through tsyringe, which needs this polyfill loaded first.
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';

export interface LocalTls {
  /** The stack's CA certificate: what a client trusts (NATS_TLS_CA). */
  caFile: string;
  /** The server's certificate (for 127.0.0.1, ::1 and localhost) and its key (0600). */
  certFile: string;
  keyFile: string;
}

const ALGORITHM = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
const DAY_MS = 86_400_000;
/** How long the certificates are valid; made again when less than a month is left. */
const VALID_DAYS = 3 * 365;
const RENEW_BEFORE_MS = 30 * DAY_MS;
/** The names a client on this machine reaches the stack's NATS by. */
const SERVER_NAMES: x509.JsonGeneralName[] = [
  { type: 'ip', value: '127.0.0.1' },
  { type: 'ip', value: '::1' },
  { type: 'dns', value: 'localhost' },
];

const pem = (label: string, der: ArrayBuffer): string =>
  `-----BEGIN ${label}-----\n${Buffer.from(der)
    .toString('base64')
    .replace(/.{64}/g, '$&\n')
    .replace(/\n?$/, '\n')}-----END ${label}-----\n`;

/** The files in `natsDir/tls`, made when missing or about to expire. */
export async function localTls(natsDir: string, now = new Date()): Promise<LocalTls> {
  const dir = join(natsDir, 'tls');
  const tls: LocalTls = {
    caFile: join(dir, 'ca.pem'),
    certFile: join(dir, 'server.pem'),
    keyFile: join(dir, 'server-key.pem'),
  };
  if (await stillGood(tls, now)) return tls;
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const notBefore = new Date(now.getTime() - DAY_MS); // a clock a little behind still accepts it
  const notAfter = new Date(now.getTime() + VALID_DAYS * DAY_MS);
  const subtle = webcrypto.subtle;
  const caKeys = await subtle.generateKey(ALGORITHM, false, ['sign', 'verify']);
  const ca = await x509.X509CertificateGenerator.createSelfSigned(
    {
      name: `CN=Toolbus local NATS CA ${now.toISOString()}`,
      notBefore,
      notAfter,
      keys: caKeys,
      signingAlgorithm: ALGORITHM,
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        await x509.SubjectKeyIdentifierExtension.create(caKeys.publicKey, false, webcrypto as Crypto),
      ],
    },
    webcrypto as Crypto,
  );
  const serverKeys = await subtle.generateKey(ALGORITHM, true, ['sign', 'verify']);
  const server = await x509.X509CertificateGenerator.create(
    {
      subject: 'CN=localhost',
      issuer: ca.subject,
      notBefore,
      notAfter,
      publicKey: serverKeys.publicKey,
      signingKey: caKeys.privateKey,
      signingAlgorithm: ALGORITHM,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        // serverAuth for clients; clientAuth too, for the routes between a cluster's nodes.
        new x509.ExtendedKeyUsageExtension([
          x509.ExtendedKeyUsage.serverAuth,
          x509.ExtendedKeyUsage.clientAuth,
        ]),
        new x509.SubjectAlternativeNameExtension(SERVER_NAMES),
        await x509.AuthorityKeyIdentifierExtension.create(caKeys.publicKey, false, webcrypto as Crypto),
      ],
    },
    webcrypto as Crypto,
  );
  const key = await subtle.exportKey('pkcs8', serverKeys.privateKey);
  // Each written whole then renamed into place; a start stopped half way leaves a key that does
  // not match its certificate, which the next start finds (stillGood) and makes all three again.
  const place = async (file: string, text: string, mode: number) => {
    await writeFile(`${file}.new`, text, { mode });
    await rename(`${file}.new`, file);
  };
  await place(tls.keyFile, pem('PRIVATE KEY', key), 0o600);
  await place(tls.certFile, server.toString('pem') + '\n', 0o644);
  await place(tls.caFile, ca.toString('pem') + '\n', 0o644);
  return tls;
}

/**
 * Whether the three files are there, the certificate signed by the CA and matching the key, and
 * valid a month more.
 */
async function stillGood(tls: LocalTls, now: Date): Promise<boolean> {
  if (![tls.caFile, tls.certFile, tls.keyFile].every((f) => existsSync(f))) return false;
  try {
    const ca = new NodeX509Certificate(await readFile(tls.caFile));
    const server = new NodeX509Certificate(await readFile(tls.certFile));
    const key = createPrivateKey(await readFile(tls.keyFile));
    return (
      server.verify(ca.publicKey) &&
      server.checkPrivateKey(key) &&
      Date.parse(server.validTo) - now.getTime() > RENEW_BEFORE_MS &&
      Date.parse(ca.validTo) - now.getTime() > RENEW_BEFORE_MS
    );
  } catch {
    return false;
  }
}

import pg from 'pg';
import t from 'tap';
import { refusedWholly } from './postgres.ts';

/** An error as the server sends it: `severity` is in the server's lc_messages language. */
const serverError = (severity: string, code: string): pg.DatabaseError => {
  const e = new pg.DatabaseError('refused', 0, 'error');
  e.severity = severity;
  e.code = code;
  return e;
};

t.test('a batch the server refused (the session survived) is appended again member by member', async (t) => {
  for (const code of ['23505', '40P01', '57014', '23502', '40001']) {
    t.ok(refusedWholly(serverError('ERROR', code)), `${code}, severity ERROR`);
  }
});

t.test('the same in a server that speaks another language (lc_messages)', async (t) => {
  // German: FEHLER; French: ERREUR. The SQLSTATE is never translated.
  t.ok(refusedWholly(serverError('FEHLER', '23505')), 'unique violation, German');
  t.ok(refusedWholly(serverError('ERREUR', '40P01')), 'deadlock, French');
});

t.test('an error that may have ended the session (or come after the commit) fails the batch', async (t) => {
  for (const [severity, code] of [
    ['FATAL', '57P01'], // terminated by an administrator
    ['FATAL', '57P02'], // crash shutdown
    ['PANIC', 'XX000'],
    ['FATAL', '25P03'], // idle in transaction timeout
    ['FATAL', '08006'],
    // Translated severities: only the SQLSTATE tells.
    ['KRITISCH', '57P01'],
    ['PANIK', '58030'],
  ] as const) {
    t.notOk(refusedWholly(serverError(severity, code)), `${severity} ${code}`);
  }
  t.notOk(refusedWholly(new Error('Connection terminated unexpectedly')), 'a lost connection');
  t.notOk(refusedWholly(serverError('ERROR', undefined as unknown as string)), 'no SQLSTATE');
});

import t from 'tap';
import { nextRecheckMs } from './approval.ts';

t.test(
  'a waiting call comes back after as long as it has waited, within bounds and the deadline',
  async (t) => {
    const s = { recheckMs: 1_000, recheckMaxMs: 5_000 };
    const far = 3_600_000;
    t.equal(nextRecheckMs(s, 0, far), 1_000, 'just recorded: after recheckMs');
    t.equal(nextRecheckMs(s, 1_000, far), 1_000);
    t.equal(nextRecheckMs(s, 2_000, far), 2_000, 'then as long as it has waited');
    t.equal(nextRecheckMs(s, 4_000, far), 4_000);
    t.equal(nextRecheckMs(s, 8_000, far), 5_000, 'never longer than recheckMaxMs');
    t.equal(nextRecheckMs(s, 600_000, far), 5_000);
    t.equal(nextRecheckMs(s, -50, far), 1_000, 'a clock that went back: recheckMs');
    t.equal(nextRecheckMs(s, 8_000, 1_200), 1_201, 'just after the deadline, not later');
    t.equal(nextRecheckMs(s, 8_000, -10), 1, 'a deadline passed already: at once');
    t.equal(
      nextRecheckMs({ recheckMs: 100, recheckMaxMs: 100 }, 10_000, far),
      100,
      'max equal to min: fixed',
    );
  },
);

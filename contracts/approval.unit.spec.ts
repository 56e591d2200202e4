import t from 'tap';
import {
  ApprovalPolicy,
  ApprovalRule,
  approvalNeeded,
  ApproveBody,
  DenyBody,
  ruleHolds,
  type DestructiveDefault,
} from './approval.ts';
import { ToolManifest } from './manifest.ts';

const rule = (r: unknown) => ApprovalRule.parse(r);

t.test('a rule compares the value at a path', async (t) => {
  const over = rule({ path: 'amount', op: 'gt', value: 100 });
  t.ok(ruleHolds(over, { amount: 101 }));
  t.notOk(ruleHolds(over, { amount: 100 }), 'gt is strict');
  t.notOk(ruleHolds(over, { amount: '1000' }), 'a string is no number');
  t.notOk(ruleHolds(over, {}), 'a missing field holds nothing');
  const nested = rule({ path: 'payment.to.country', op: 'in', value: ['KP', 'IR'] });
  t.ok(ruleHolds(nested, { payment: { to: { country: 'IR' } } }));
  t.notOk(ruleHolds(nested, { payment: { to: { country: 'DE' } } }));
  const eq = rule({ path: 'mode', op: 'eq', value: { hard: true, at: 1 } });
  t.ok(ruleHolds(eq, { mode: { at: 1, hard: true } }), 'eq compares JSON values, whatever the key order');
  t.ok(ruleHolds(rule({ path: 'mode', op: 'ne', value: 'dry-run' }), { mode: 'live' }));
});

t.test('a wildcard reaches every element; any, sum and count reduce them', async (t) => {
  const args = {
    rows: [
      { usageHours: 720, hourlyRate: 2 },
      { usageHours: 100, hourlyRate: 10 },
    ],
  };
  t.ok(ruleHolds(rule({ path: 'rows.*.hourlyRate', op: 'gte', value: 10 }), args), 'any element');
  t.notOk(ruleHolds(rule({ path: 'rows.*.hourlyRate', op: 'gt', value: 10 }), args));
  const spend = { path: 'rows.*.usageHours', times: 'hourlyRate', aggregate: 'sum', op: 'gt' };
  t.ok(ruleHolds(rule({ ...spend, value: 2439 }), args), 'spend 1440 + 1000 = 2440 > 2439');
  t.notOk(ruleHolds(rule({ ...spend, value: 2440 }), args));
  t.ok(ruleHolds(rule({ path: 'rows.*', aggregate: 'count', op: 'gte', value: 2 }), args));
  t.notOk(ruleHolds(rule({ ...spend, value: 0 }), { rows: 'none' }), 'nothing to sum is 0');
});

t.test('a rule that cannot mean anything is refused where it is written', async (t) => {
  t.notOk(ApprovalRule.safeParse({ path: 'a', op: 'gt', value: 'x' }).success, 'gt needs a number');
  t.notOk(ApprovalRule.safeParse({ path: 'a', op: 'in', value: 1 }).success, 'in needs a list');
  t.notOk(
    ApprovalRule.safeParse({ path: 'a', aggregate: 'sum', op: 'eq', value: 1 }).success,
    'a sum is compared by order',
  );
  t.notOk(ApprovalRule.safeParse({ path: '*.a', op: 'eq', value: 1 }).success, 'a path starts with a field');
  t.notOk(ApprovalRule.safeParse({ path: 'a..b', op: 'eq', value: 1 }).success);
  t.notOk(ApprovalPolicy.safeParse({ approverRoles: [] }).success, 'someone must be able to approve');
  t.notOk(ApprovalPolicy.safeParse({ approverRoles: ['approver'], timeoutMs: 10 }).success, 'at least 1 s');
  t.same(ApprovalPolicy.parse({ approverRoles: ['approver'] }), {
    approverRoles: ['approver'],
    timeoutMs: 15 * 60_000,
    allowSelfApproval: false,
  });
});

t.test('which calls wait, and for whom', async (t) => {
  const destructive: DestructiveDefault = {
    approverRoles: ['ops'],
    timeoutMs: 60_000,
    allowSelfApproval: true,
  };
  const always = { approval: ApprovalPolicy.parse({ approverRoles: ['approver'] }) };
  t.same(approvalNeeded(always, {}, null), {
    approverRoles: ['approver', 'admin'],
    timeoutMs: 15 * 60_000,
    allowSelfApproval: false,
    because: 'policy',
  });
  const ruled = {
    approval: ApprovalPolicy.parse({
      approverRoles: ['finance'],
      when: [{ path: 'amount', op: 'gt', value: 100 }],
    }),
  };
  t.equal(approvalNeeded(ruled, { amount: 5 }, destructive), null, 'no rule holds: it runs');
  t.equal(approvalNeeded(ruled, { amount: 500 }, destructive)?.because, 'policy');
  const hinted = { annotations: { destructiveHint: true } };
  t.same(approvalNeeded(hinted, {}, destructive), {
    approverRoles: ['ops', 'admin'],
    timeoutMs: 60_000,
    allowSelfApproval: true,
    because: 'destructive',
  });
  t.equal(approvalNeeded(hinted, {}, null), null, 'the operator turned the default off');
  t.equal(approvalNeeded({ annotations: { destructiveHint: false } }, {}, destructive), null);
  t.equal(
    approvalNeeded({ ...hinted, ...ruled }, { amount: 5 }, destructive),
    null,
    "a tool's own policy wins over the destructive default",
  );
});

t.test('a manifest carries its policy; old manifests stay valid', async (t) => {
  const base = {
    name: 'pay',
    version: '1.0.0',
    description: 'pays',
    inputSchema: { type: 'object' },
    outputSchema: { type: 'object' },
    roles: [],
    timeoutMs: 1000,
    idempotent: false,
    cacheable: false,
  };
  t.ok(ToolManifest.safeParse(base).success, 'without approval');
  const parsed = ToolManifest.parse({
    ...base,
    approval: { approverRoles: ['finance'], when: [{ path: 'amount', op: 'gt', value: 1 }] },
  });
  t.same(parsed.approval?.when, [{ path: 'amount', aggregate: 'any', op: 'gt', value: 1 }]);
  t.notOk(ToolManifest.safeParse({ ...base, approval: { approverRoles: ['Finance!'] } }).success);
});

t.test('the approvers bodies', async (t) => {
  const hash = 'a'.repeat(64);
  t.ok(ApproveBody.safeParse({ argsHash: hash }).success);
  t.notOk(ApproveBody.safeParse({ argsHash: 'A'.repeat(64) }).success, 'lower-case hex');
  t.notOk(ApproveBody.safeParse({ argsHash: hash, extra: 1 }).success, 'nothing else');
  t.notOk(DenyBody.safeParse({ argsHash: hash }).success, 'a denial says why');
  t.notOk(DenyBody.safeParse({ argsHash: hash, reason: '' }).success);
});

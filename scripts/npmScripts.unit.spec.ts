import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import t from 'tap';

/**
 * npm runs a script as `sh -c '<script>'` and passes a SIGINT or SIGTERM it receives on to that
 * shell only. Debian's sh (dash) does not exec the last command of `-c` itself: a SIGTERM kills the
 * shell and leaves the node process under it running, with every server and service it started
 * (and their ports taken), and a SIGINT reaches no one. So the long-running scripts `exec` node:
 * the signal then reaches the process that stops everything. (A terminal's Ctrl-C reaches the
 * whole process group and worked either way; a process manager or `kill <npm's pid>` did not.)
 */
const LONG_RUNNING = ['start', 'start:cluster', 'worker', 'mcp-tools'];

const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as {
  scripts: Record<string, string>;
};

t.test('the long-running npm scripts exec node, so that npm passes signals to it', async (t) => {
  for (const name of LONG_RUNNING) {
    t.match(pkg.scripts[name], /^exec node /, name);
  }
});

/** Runs `sh -c <script>` as npm does, sends the shell SIGTERM, and tells whether node heard it. */
const nodeHearsSigterm = (script: string): Promise<boolean> =>
  new Promise((resolve, reject) => {
    const child = spawn('sh', ['-c', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    const timer = setTimeout(() => {
      // No word from node: it did not get the signal. It is still running; end it by its pid.
      const pid = /up (\d+)/.exec(out)?.[1];
      if (pid) process.kill(Number(pid), 'SIGKILL');
      resolve(false);
    }, 3000);
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('up ')) child.kill('SIGTERM');
      if (out.includes('heard SIGTERM')) {
        clearTimeout(timer);
        resolve(true);
      }
    });
    child.on('error', reject);
  });

const probe =
  `node -e "process.on('SIGTERM', () => { console.log('heard SIGTERM'); process.exit(0); });` +
  ` console.log('up ' + process.pid); setInterval(() => {}, 1000);"`;

t.test('why: a signal to the shell reaches node only with exec', async (t) => {
  t.equal(await nodeHearsSigterm(`exec ${probe}`), true, 'with exec, node hears it');
  // Without exec it depends on the shell (bash execs a lone command itself, dash does not).
  t.comment(`without exec, node heard it: ${await nodeHearsSigterm(probe)}`);
});

import { readFileSync } from 'node:fs';

/** CPU time (user + system, µs) of any process on this machine, from /proc (10 ms resolution). */
export function procCpuUs(pid: number | undefined): number | null {
  if (!pid) return null;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // After the command: state(0) ... utime(11) stime(12), in clock ticks (100 per second on Linux).
    return (Number(fields[11]) + Number(fields[12])) * 10_000;
  } catch {
    return null;
  }
}

/** System calls that wrote (`syscw` of /proc/<pid>/io: sockets, pipes, files) by a process so far. */
export function procWriteCalls(pid: number | undefined): number | null {
  if (!pid) return null;
  try {
    const io = readFileSync(`/proc/${pid}/io`, 'utf8');
    const m = /^syscw: (\d+)$/m.exec(io);
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

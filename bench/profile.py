#!/usr/bin/python3
"""Where the time goes: CPU time and context switches per request, by part.

    bench/profile.py [--seconds 10] [--conns 16] [--perf] TARGET...

For each target (names as in `bench/bench.py`: ours-wsgi, passenger-wsgi,
mod_wsgi-6x1, ...) it starts the target's Apache, warms it up, runs wrk and
charges the CPU time (user + system) and the context switches of every
process to one part: Apache (parent and workers), the agent (ours: the
agent; Passenger: watchdog + core), the app processes (and preloaders), and
wrk itself. Printed per request, in microseconds, so two servers that move
the same load can be compared part by part.

With --perf it also records `perf record -g` on the agent (ours) or core
(Passenger) and on the Apache workers during the run and prints the top
symbols (needs `perf`: apt-get install linux-perf).
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def proc_stat(pid):
    """(CPU ticks, voluntary + involuntary context switches) of a process and its threads."""
    ticks = switches = 0
    try:
        with open(f'/proc/{pid}/stat') as f:
            fields = f.read().rsplit(')', 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])
        for tid in os.listdir(f'/proc/{pid}/task'):
            with open(f'/proc/{pid}/task/{tid}/status') as f:
                for line in f:
                    if line.startswith(('voluntary_ctxt_switches', 'nonvoluntary_ctxt_switches')):
                        switches += int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return ticks, switches


def parts(apache):
    """part name -> pids, for the target's processes now."""
    snap = bench.snapshot(apache)
    agent = {a['pid'] for a in snap['agents']}
    apps = {a['pid'] for a in snap['apps']} | {p['pid'] for p in snap['preloaders']}
    pid = apache.pid()
    tree = ({pid} | bench.descendants(pid)) if pid else set()
    return {'apache': tree - agent - apps, 'agent': agent, 'apps': apps}


def measure(apache, seconds, conns, perf):
    before = {}
    for part, pids in parts(apache).items():
        for p in pids:
            before[p] = (part, proc_stat(p))
    perf_proc = None
    if perf:
        agent_pids = sorted(parts(apache)['agent']) + sorted(parts(apache)['apache'])
        perf_proc = subprocess.Popen(
            ['perf', 'record', '-g', '-o', os.path.join(apache.dir, 'perf.data'), '-p',
             ','.join(map(str, agent_pids)), '--', 'sleep', str(seconds)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = os.times()
    run = bench.wrk(apache.port, apache.target.path, conns, seconds)
    t1 = os.times()
    totals = {'apache': [0, 0], 'agent': [0, 0], 'apps': [0, 0]}
    now = parts(apache)
    for part, pids in now.items():
        for p in pids:
            ticks, switches = proc_stat(p)
            if p in before:
                ticks -= before[p][1][0]
                switches -= before[p][1][1]
            totals[part][0] += ticks
            totals[part][1] += switches
    hz = os.sysconf('SC_CLK_TCK')
    wrk_s = t1.children_user + t1.children_system - t0.children_user - t0.children_system
    n = max(run['requests'], 1)
    out = {part: (1e6 * ticks / hz / n, sw / n) for part, (ticks, sw) in totals.items()}
    out['wrk'] = (1e6 * wrk_s / n, None)
    if perf_proc:
        perf_proc.wait()
    return run, out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('targets', nargs='+')
    parser.add_argument('--seconds', type=int, default=10)
    parser.add_argument('--conns', type=int, default=16)
    parser.add_argument('--perf', action='store_true')
    args = parser.parse_args()
    by_name = {t.name: t for t in bench.targets()}
    base = tempfile.mkdtemp(prefix='mp-profile-')
    os.chmod(base, 0o755)
    bench.freeze_module(base)
    print(f'| target | req/s | p99 ms | Apache µs/req | agent µs/req | apps µs/req | wrk µs/req | '
          f'switches/req Apache / agent / apps |')
    print('|---|---|---|---|---|---|---|---|')
    for name in args.targets:
        t = by_name[name]
        apache = bench.Apache(base, t, bench.APP_DIRS.get(t.lang) if t.lang else None)
        cold, why = apache.start()
        if cold is None:
            print(f'| {t.label} | not available: {why} |')
            apache.stop()
            continue
        bench.wrk(apache.port, t.path, args.conns, 5)
        time.sleep(1)
        run, out = measure(apache, args.seconds, args.conns, args.perf)
        print(f'| {t.label} | {run["rps"]:.0f} | {run["p99_ms"]} | {out["apache"][0]:.0f} | {out["agent"][0]:.0f} | '
              f'{out["apps"][0]:.0f} | {out["wrk"][0]:.0f} | {out["apache"][1]:.2f} / {out["agent"][1]:.2f} / '
              f'{out["apps"][1]:.2f} |', flush=True)
        if args.perf:
            report = subprocess.run(
                ['perf', 'report', '-i', os.path.join(apache.dir, 'perf.data'), '--no-children', '--stdio',
                 '--sort', 'comm,dso,symbol', '-g', 'none', '--percent-limit', '1.5'],
                capture_output=True, text=True)
            lines = [l for l in report.stdout.splitlines() if l.strip() and not l.startswith('#')]
            print('\n'.join(f'    {l.strip()}' for l in lines[:30]), file=sys.stderr)
        apache.stop()
        time.sleep(1)


if __name__ == '__main__':
    main()

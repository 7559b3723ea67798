#!/usr/bin/python3
"""The benchmark: our module against Phusion Passenger, mod_wsgi and Apache's
own static file serving, on loopback, in one run.

    bench/bench.py [run]        the comparison (BENCH_QUICK=1: 3 s runs, 1 round)
    bench/bench.py soak         60 s at 64 connections against our module, with a
                                graceful restart and a restart.txt, after the same
                                load against Apache alone (the control)
    bench/bench.py markdown F   renders a results file (JSON) as Markdown

`bench/run.sh` (`make bench`) installs what this needs and builds the module
first. Every target gets its own Apache (event MPM) with its own generated
config, ServerRoot, PidFile and ErrorLog in a temporary directory; it is
started with `apache2 -f <conf> -k start` and stopped after its runs. The
rounds alternate the targets (odd rounds in reverse order), so a slow spell
of the machine falls on all of them. Results go to stdout as tables and to
bench/results/latest.json (soak: latest-soak.json).

Only the standard library; only 127.0.0.1; every load is bounded in time.
"""

import argparse
import datetime
import http.client
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
APPS = os.path.join(BENCH, 'apps')
RESULTS = os.path.join(BENCH, 'results')
APACHE = '/usr/sbin/apache2'
MODULES = '/usr/lib/apache2/modules'
OURS_SO = os.environ.get('BENCH_MODULE', os.path.join(REPO, 'target/release/mod_passenger.so'))
PASSENGER_SO = os.path.join(MODULES, 'mod_passenger.so')
WSGI_SO = os.path.join(MODULES, 'mod_wsgi.so')

POOL_SIZE = 6  # PassengerMaxPoolSize for ours and Passenger alike
MIN_INSTANCES = 1

# Apache settings every target shares (Debian's defaults for the event MPM
# and keep-alive, written out so they are the same whatever the host has).
APACHE_SETTINGS = [
    ('MPM', 'event'),
    ('StartServers', '2'),
    ('MinSpareThreads', '25'),
    ('MaxSpareThreads', '75'),
    ('ThreadLimit', '64'),
    ('ThreadsPerChild', '25'),
    ('MaxRequestWorkers', '150'),
    ('MaxConnectionsPerChild', '0'),
    ('KeepAlive', 'On'),
    ('MaxKeepAliveRequests', '100'),
    ('KeepAliveTimeout', '5'),
    ('LogLevel', 'warn'),
]

# The soak run sizes Apache for its 64 connections: with the defaults above
# (50 worker threads at start, and again after every graceful restart), 64
# connections whose requests wait for 6 app processes leave no idle worker,
# and the event MPM then closes idle keep-alive connections, whatever module
# serves the app (`bench/bench.py soak --apache-defaults` shows it).
SOAK_APACHE_SETTINGS = dict(APACHE_SETTINGS, StartServers='4', MinSpareThreads='75', MaxSpareThreads='150')

APP_DIRS = {'wsgi': 'hello-wsgi', 'rack': 'hello-rack', 'node': 'hello-node'}
SOAK_DIRS = {'wsgi': 'soak-wsgi', 'rack': 'soak-rack', 'node': 'soak-node'}
LANG_NAMES = {'wsgi': 'WSGI', 'rack': 'Rack', 'node': 'Node'}


def log(message):
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Targets: one Apache configuration each.


class Target:
    """One thing to measure: a server setup and the URL of its hello world."""

    def __init__(self, name, label, kind, lang=None, processes=None, optional=False):
        self.name = name
        self.label = label
        self.kind = kind  # static | ours | passenger | mod_wsgi
        self.lang = lang  # wsgi | rack | node | None
        self.processes = processes  # mod_wsgi daemon processes
        self.optional = optional  # may be "not available" (probed at setup)
        self.path = '/hello.txt' if kind == 'static' else '/'
        self.expect = b'hello\n' if kind == 'static' else b'hello'

    def settings(self):
        """What this target is allowed: processes and threads per app."""
        if self.kind == 'static':
            return 'Apache alone, no app'
        if self.kind == 'mod_wsgi':
            return f'WSGIDaemonProcess processes={self.processes} threads=1'
        # Both default to smart spawning for Ruby (a preloader forks the
        # app processes) and direct spawning otherwise.
        spawn = ', smart spawning' if self.lang == 'rack' else ', direct spawning'
        per_process = ('many requests per process at once (Node)' if self.lang == 'node'
                       else '1 request per process at a time')
        return f'PassengerMaxPoolSize {POOL_SIZE}, PassengerMinInstances {MIN_INSTANCES}, {per_process}' + spawn


def targets():
    """Every target, in the order of an even round."""
    return [
        Target('static', 'static file (Apache alone: the ceiling)', 'static'),
        Target('ours-wsgi', 'ours, WSGI', 'ours', 'wsgi'),
        Target('passenger-wsgi', 'Passenger, WSGI', 'passenger', 'wsgi'),
        Target('mod_wsgi-2x1', 'mod_wsgi daemon 2x1', 'mod_wsgi', 'wsgi', processes=2),
        Target('mod_wsgi-6x1', 'mod_wsgi daemon 6x1', 'mod_wsgi', 'wsgi', processes=6),
        Target('ours-rack', 'ours, Rack', 'ours', 'rack', optional=True),
        Target('passenger-rack', 'Passenger, Rack', 'passenger', 'rack'),
        Target('ours-node', 'ours, Node', 'ours', 'node', optional=True),
        Target('passenger-node', 'Passenger, Node', 'passenger', 'node', optional=True),
    ]


def passenger_root():
    """Debian's locations.ini, from the package's file list."""
    try:
        files = subprocess.run(['dpkg', '-L', 'passenger'], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        files = ''
    for line in files.splitlines():
        if line.endswith('/locations.ini'):
            return line
    return '/usr/lib/ruby/vendor_ruby/phusion_passenger/locations.ini'


def freeze_module(base):
    """Copies our module and its agent into the run's directory and uses that
    copy, so a rebuild in the work tree during a long run changes nothing."""
    global OURS_SO
    frozen = os.path.join(base, 'ours-build')
    os.makedirs(frozen)
    os.chmod(frozen, 0o755)
    src = os.path.dirname(OURS_SO)
    for name in ('mod_passenger.so', 'passenger-agent'):
        shutil.copy2(os.path.join(src, name), os.path.join(frozen, name))
    OURS_SO = os.path.join(frozen, 'mod_passenger.so')


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def copy_app(src, dst):
    """Copies an app, readable by everyone (the apps run as nobody)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns('__pycache__'))
    for root, dirs, files in os.walk(dst):
        os.chmod(root, 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)


class Apache:
    """One Apache instance for one target, in its own directory."""

    def __init__(self, base, target, app_dir, settings=None):
        self.target = target
        self.settings = dict(settings or APACHE_SETTINGS)
        self.dir = tempfile.mkdtemp(prefix=f'{target.name}-', dir=base)
        os.chmod(self.dir, 0o755)
        self.port = free_port()
        self.conf = os.path.join(self.dir, 'httpd.conf')
        self.registry = os.path.join(self.dir, 'registry')
        os.makedirs(self.registry)
        os.chmod(self.registry, 0o755)
        self.app = None
        if app_dir:
            self.app = os.path.join(self.dir, 'app')
            copy_app(os.path.join(APPS, app_dir), self.app)
        with open(self.conf, 'w') as f:
            f.write(self.render())

    def render(self):
        d, t, settings = self.dir, self.target, self.settings
        lines = [
            f'ServerRoot "{d}"',
            'ServerName 127.0.0.1',
            f'Listen 127.0.0.1:{self.port}',
            f'PidFile {d}/httpd.pid',
            f'ErrorLog {d}/error.log',
            f'LogLevel {settings["LogLevel"]}',
            f'DefaultRuntimeDir {d}',
            f'Mutex file:{d} default',
        ]
        if os.geteuid() == 0:
            lines += ['User www-data', 'Group www-data']
        lines.append(f'LoadModule mpm_event_module {MODULES}/mod_mpm_event.so')
        for mod in ('authz_core', 'mime', 'dir', 'env', 'alias'):
            lines.append(f'LoadModule {mod}_module {MODULES}/mod_{mod}.so')
        lines.append('TypesConfig /etc/mime.types')
        lines += [f'{k} {v}' for k, v in settings.items() if k not in ('MPM', 'LogLevel')]
        if t.kind == 'static':
            lines += [
                f'DocumentRoot {d}/static',
                f'<Directory {d}/static>',
                '    Require all granted',
                '</Directory>',
            ]
            copy_app(os.path.join(APPS, 'static'), os.path.join(d, 'static'))
        elif t.kind == 'mod_wsgi':
            lines += [
                f'LoadModule wsgi_module {WSGI_SO}',
                f'WSGISocketPrefix {d}/wsgi',
                f'WSGIDaemonProcess bench processes={t.processes} threads=1 display-name=(wsgi:bench)',
                'WSGIProcessGroup bench',
                'WSGIApplicationGroup %{GLOBAL}',
                f'WSGIScriptAlias / {self.app}/passenger_wsgi.py',
                f'DocumentRoot {self.app}/public',
                f'<Directory {self.app}>',
                '    Require all granted',
                '</Directory>',
            ]
        else:
            if t.kind == 'ours':
                lines.append(f'LoadModule passenger_module {OURS_SO}')
            else:
                lines += [
                    f'LoadModule passenger_module {PASSENGER_SO}',
                    f'PassengerRoot {passenger_root()}',
                    'PassengerDefaultRuby /usr/bin/ruby',
                    'PassengerDisableSecurityUpdateCheck on',
                    'PassengerDisableAnonymousTelemetry on',
                ]
            lines += [
                f'PassengerInstanceRegistryDir {self.registry}',
                'PassengerPython /usr/bin/python3',
                'PassengerNodejs /usr/bin/node',
                f'PassengerMaxPoolSize {POOL_SIZE}',
                f'PassengerMinInstances {MIN_INSTANCES}',
                'PassengerFriendlyErrorPages off',
                f'<VirtualHost 127.0.0.1:{self.port}>',
                '    ServerName 127.0.0.1',
                f'    DocumentRoot {self.app}/public',
                f'    <Directory {self.app}/public>',
                '        Require all granted',
                '    </Directory>',
                '</VirtualHost>',
            ]
        return '\n'.join(lines) + '\n'

    def ctl(self, action):
        return subprocess.run([APACHE, '-f', self.conf, '-k', action], capture_output=True, text=True)

    def pid(self):
        try:
            with open(os.path.join(self.dir, 'httpd.pid')) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def error_log(self):
        try:
            with open(os.path.join(self.dir, 'error.log'), errors='replace') as f:
                return f.read()
        except OSError:
            return ''

    def last_error_line(self):
        """The last error-log line at warn level or above, for "not available"."""
        lines = [line for line in self.error_log().splitlines()
                 if re.search(r':(warn|error|crit|alert|emerg)\]', line)]
        if not lines:
            return '(nothing at warn level or above in the error log)'
        # Without the "[date] [module:level] [pid N] " prefix.
        return re.sub(r'^(\[[^]]*\] )+', '', lines[-1].strip()).replace(self.dir, '<dir>')

    def start(self, deadline_s=30.0):
        """Starts Apache; returns (seconds to the first good answer, None) or (None, why)."""
        t0 = time.monotonic()
        out = self.ctl('start')
        if out.returncode != 0:
            return None, (f'apache2 -k start failed (exit {out.returncode}): '
                          f'{(out.stderr.strip() or out.stdout.strip())[-300:]}; error log: {self.last_error_line()}')
        last = 'no answer'
        while time.monotonic() - t0 < deadline_s:
            status, body, err = http_get(self.port, self.target.path)
            if status == 200 and body == self.target.expect:
                return time.monotonic() - t0, None
            if status is not None:
                last = f'HTTP {status}'
                if status not in (502, 503):
                    # An answer that is not "still starting": no point waiting.
                    if time.monotonic() - t0 > 5:
                        break
            else:
                last = err
            time.sleep(0.005)
        return None, f'{last}; error log: {self.last_error_line()}'

    def stop(self):
        """Stops Apache and waits for it, its agent and its app processes to go."""
        pid = self.pid()
        tree = descendants(pid) if pid else set()
        tree |= set(self.agent_pids())
        for agent in self.agent_pids():
            tree |= descendants(agent)
        self.ctl('stop')
        deadline = time.monotonic() + 20
        left = set()
        while time.monotonic() < deadline:
            left = {p for p in tree | ({pid} if pid else set()) if alive(p)}
            if not left:
                break
            time.sleep(0.05)
        return sorted(left)

    def agent_pids(self):
        """Our agent (registry/*/agent.pid) or Passenger's watchdog and core."""
        pids = []
        if self.target.kind == 'ours':
            for entry in sorted(os.listdir(self.registry)):
                try:
                    with open(os.path.join(self.registry, entry, 'agent.pid')) as f:
                        pids.append(int(f.read().strip()))
                except (OSError, ValueError):
                    pass
        elif self.target.kind == 'passenger':
            pids = [p for p, cmd in processes().items() if passenger_role(cmd) in ('watchdog', 'core')
                    and self.belongs(p)]
        return [p for p in pids if alive(p)]

    def belongs(self, pid):
        """Whether a process descends from this Apache (Passenger's agents do)."""
        mine = self.pid()
        seen = 0
        while pid and pid > 1 and seen < 64:
            if pid == mine:
                return True
            pid = ppid(pid)
            seen += 1
        return False


# --------------------------------------------------------------------------
# HTTP, processes and memory.


def http_get(port, path, timeout=5.0):
    """One GET on a new connection: (status, body, error)."""
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=timeout)
    try:
        conn.request('GET', path, headers={'Connection': 'close'})
        response = conn.getresponse()
        return response.status, response.read(), None
    except (OSError, http.client.HTTPException) as e:
        return None, b'', f'{type(e).__name__}: {e}'
    finally:
        conn.close()


def processes():
    """pid -> command line, for every process."""
    out = {}
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open(f'/proc/{entry}/cmdline', 'rb') as f:
                    out[int(entry)] = f.read().replace(b'\0', b' ').decode(errors='replace').strip()
            except OSError:
                pass
    return out


def ppid(pid):
    try:
        with open(f'/proc/{pid}/stat') as f:
            return int(f.read().rsplit(')', 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def alive(pid):
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except (OSError, IndexError):
        return False


def descendants(root):
    """Every live process below `root`."""
    children = {}
    for pid in processes():
        parent = ppid(pid)
        if parent:
            children.setdefault(parent, []).append(pid)
    out, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return {p for p in out if alive(p)}


def children_of(pid):
    return {p for p in processes() if ppid(p) == pid and alive(p)}


def our_app_processes(agent):
    """(preloaders, app processes) under our agent: with smart spawning the
    agent's child is a preloader and the app processes are its children."""
    preloaders, apps = [], []
    for child in sorted(children_of(agent)):
        below = descendants(child)
        if below:
            preloaders.append(child)
            apps += sorted(below)
        else:
            apps.append(child)
    return preloaders, apps


def passenger_role(cmd):
    """watchdog | core | preloader | app | None, from Passenger's process titles."""
    if cmd.startswith('Passenger watchdog') or re.search(r'PassengerAgent watchdog', cmd):
        return 'watchdog'
    if cmd.startswith('Passenger core') or re.search(r'PassengerAgent core', cmd):
        return 'core'
    if 'Preloader' in cmd:
        return 'preloader'
    return None


def memory(pid):
    """RSS, PSS and private dirty memory of a process, in KiB."""
    out = {'pid': pid}
    try:
        with open(f'/proc/{pid}/smaps_rollup') as f:
            for line in f:
                key, _, rest = line.partition(':')
                if key in ('Rss', 'Pss', 'Private_Dirty'):
                    out[key.lower()] = int(rest.split()[0])
    except OSError:
        return None
    return out


def thread_count(pid):
    try:
        with open(f'/proc/{pid}/status') as f:
            for line in f:
                if line.startswith('Threads:'):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def fd_count(pid):
    try:
        return len(os.listdir(f'/proc/{pid}/fd'))
    except OSError:
        return None


QUIET_PCT = 10  # other CPU below which the machine counts as quiet
NOISY_PCT = 20  # a run during which others used more is run again (once)


def wait_quiet(max_wait=15):
    """Waits (at most `max_wait` s) for a second in which the machine is below
    QUIET_PCT busy: nothing of the benchmark runs in between targets, so all
    of it is someone else's. Returns the last second's busy share."""
    hz, cores = os.sysconf('SC_CLK_TCK'), os.cpu_count() or 1
    deadline = time.monotonic() + max_wait
    while True:
        b0 = busy_ticks()
        time.sleep(1)
        pct = 100.0 * (busy_ticks() - b0) / (hz * cores)
        if pct < QUIET_PCT or time.monotonic() > deadline:
            return round(pct, 1)


def target_pids(apache):
    """Apache, its children, our agent and its apps (or Passenger's, mod_wsgi's)."""
    pid = apache.pid()
    pids = ({pid} | descendants(pid)) if pid else set()
    for agent in apache.agent_pids():
        pids |= {agent} | descendants(agent)
    return pids


def snapshot(apache):
    """The target's processes by role, with their memory."""
    t = apache.target
    all_cmds = processes()
    apache_pid = apache.pid()
    tree = descendants(apache_pid) if apache_pid else set()
    agents, apps, preloaders = [], [], []
    if t.kind == 'ours':
        for agent in apache.agent_pids():
            agents.append(('agent', agent))
            more_preloaders, more_apps = our_app_processes(agent)
            preloaders += more_preloaders
            apps += more_apps
    elif t.kind == 'passenger':
        for pid in sorted(tree):
            role = passenger_role(all_cmds.get(pid, ''))
            if role in ('watchdog', 'core'):
                agents.append((role, pid))
            elif role == 'preloader':
                preloaders.append(pid)
        core = [p for r, p in agents if r == 'core']
        for c in core:
            apps += sorted(p for p in descendants(c) if p not in preloaders
                           and passenger_role(all_cmds.get(p, '')) is None)
    elif t.kind == 'mod_wsgi':
        apps = sorted(p for p in tree if '(wsgi:bench)' in all_cmds.get(p, ''))
    workers = sorted(p for p in tree if all_cmds.get(p, '').startswith(APACHE))

    def mem_list(pids):
        return [m for m in (memory(p) for p in pids) if m]

    return {
        'agents': [dict(memory(p) or {'pid': p}, role=r, fds=fd_count(p)) for r, p in agents],
        'preloaders': mem_list(preloaders),
        'apps': mem_list(apps),
        'apache_workers': len(workers),
    }


# --------------------------------------------------------------------------
# wrk.


TIME_UNITS = {'us': 0.001, 'ms': 1.0, 's': 1000.0, 'm': 60000.0, 'h': 3600000.0}


def parse_time_ms(text):
    m = re.fullmatch(r'([\d.]+)(us|ms|s|m|h)', text.strip())
    return round(float(m.group(1)) * TIME_UNITS[m.group(2)], 4) if m else None


def parse_wrk(output):
    """req/s, p50/p99/max latency (ms), requests and error counts from wrk's output."""
    r = {'rps': None, 'p50_ms': None, 'p99_ms': None, 'max_ms': None, 'requests': 0,
         'non2xx': 0, 'socket_errors': {'connect': 0, 'read': 0, 'write': 0, 'timeout': 0}}
    m = re.search(r'Requests/sec:\s*([\d.]+)', output)
    if m:
        r['rps'] = float(m.group(1))
    for pct, key in (('50', 'p50_ms'), ('99', 'p99_ms')):
        m = re.search(rf'^\s*{pct}(?:\.000)?%\s+(\S+)', output, re.M)
        if m:
            r[key] = parse_time_ms(m.group(1))
    m = re.search(r'^\s*Latency\s+\S+\s+\S+\s+(\S+)', output, re.M)
    if m:
        r['max_ms'] = parse_time_ms(m.group(1))
    m = re.search(r'(\d+) requests in', output)
    if m:
        r['requests'] = int(m.group(1))
    m = re.search(r'Non-2xx or 3xx responses:\s*(\d+)', output)
    if m:
        r['non2xx'] = int(m.group(1))
    m = re.search(r'Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)', output)
    if m:
        r['socket_errors'] = dict(zip(('connect', 'read', 'write', 'timeout'), map(int, m.groups())))
    return r


def errors_of(run):
    return run['non2xx'] + sum(run['socket_errors'].values())


def wrk_cmd(port, path, conns, seconds, extra=()):
    threads = 1 if conns == 1 else 2
    return ['wrk', f'-t{threads}', f'-c{conns}', f'-d{seconds}s', '--latency', *extra,
            f'http://127.0.0.1:{port}{path}']


def busy_ticks():
    """CPU ticks the whole machine spent busy (from /proc/stat)."""
    with open('/proc/stat') as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...: interrupts are left
    # out, as most of them are the benchmark's own loopback traffic, which no
    # process is charged for.
    return sum(fields[:3]) + fields[7]


def proc_ticks(pids):
    total = 0
    for pid in pids:
        try:
            with open(f'/proc/{pid}/stat') as f:
                fields = f.read().rsplit(')', 1)[1].split()
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        except (OSError, ValueError, IndexError):
            pass
    return total


def wrk(port, path, conns, seconds, apache=None):
    """One wrk run. With `apache`, also estimates the share of the machine that
    processes other than the target and wrk used meanwhile ("other CPU"): two
    cores shared with anything else make the figures move."""
    cmd = wrk_cmd(port, path, conns, seconds)
    pids = target_pids(apache) if apache else set()
    ours0, busy0, t0 = proc_ticks(pids), busy_ticks(), time.monotonic()
    kids0 = os.times()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    kids1 = os.times()
    pids |= target_pids(apache) if apache else set()
    elapsed = time.monotonic() - t0
    hz = os.sysconf('SC_CLK_TCK')
    wrk_ticks = (kids1.children_user + kids1.children_system - kids0.children_user - kids0.children_system) * hz
    other = busy_ticks() - busy0 - (proc_ticks(pids) - ours0) - wrk_ticks
    result = parse_wrk(out.stdout)
    result['cmd'] = ' '.join(cmd)
    if apache:
        result['other_cpu_pct'] = round(max(0.0, 100.0 * other / (elapsed * hz * (os.cpu_count() or 1))), 1)
    if result['rps'] is None:
        result['wrk_failed'] = (out.stdout + out.stderr).strip()[-400:]
    return result


# --------------------------------------------------------------------------
# The comparison.


def summarize(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {'median': statistics.median(values), 'min': min(values), 'max': max(values), 'n': len(values)}


def machine():
    def cmd(*argv):
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
            return (out.stdout or out.stderr).strip()
        except (OSError, subprocess.TimeoutExpired):
            return None

    def dpkg_version(pkg):
        return cmd('dpkg-query', '-W', '-f=${Version}', pkg)

    mem_kb = None
    with open('/proc/meminfo') as f:
        for line in f:
            if line.startswith('MemTotal:'):
                mem_kb = int(line.split()[1])
    cpu = None
    with open('/proc/cpuinfo') as f:
        for line in f:
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    apache_version = cmd(APACHE, '-v') or ''
    m = re.search(r'Apache/(\S+)', apache_version)
    debian = None
    if os.path.exists('/etc/debian_version'):
        with open('/etc/debian_version') as f:
            debian = f.read().strip()
    commit = cmd('git', '-C', REPO, 'rev-parse', '--short', 'HEAD')
    dirty = cmd('git', '-C', REPO, 'status', '--porcelain', '--untracked-files=no')
    return {
        'nproc': os.cpu_count(),
        'cpu': cpu,
        'memory_gib': round(mem_kb / 1024 / 1024, 1) if mem_kb else None,
        'kernel': platform.release(),
        'debian': debian,
        'apache': m.group(1) if m else apache_version,
        'passenger': dpkg_version('passenger'),
        'mod_wsgi': dpkg_version('libapache2-mod-wsgi-py3'),
        'wrk': dpkg_version('wrk'),
        'python': cmd('/usr/bin/python3', '--version'),
        'ruby': cmd('/usr/bin/ruby', '--version'),
        'node': cmd('/usr/bin/node', '--version'),
        'commit': (commit or '?') + (' (with local changes)' if dirty else ''),
        'loadavg_start': os.getloadavg()[0],
    }


def run_comparison(args):
    quick = args.quick
    duration = 3 if quick else 10
    warmup = 2 if quick else 5
    rounds = 1 if quick else args.rounds
    only = set(args.only.split(',')) if args.only else None
    chosen = [t for t in targets() if not only or t.name in only]
    base = tempfile.mkdtemp(prefix='mp-bench-')
    os.chmod(base, 0o755)
    freeze_module(base)
    info = machine()
    log(f'bench: {len(chosen)} targets, {rounds} round(s), {duration} s runs after a {warmup} s warm-up; '
        f'work in {base}')
    results = {t.name: {'label': t.label, 'kind': t.kind, 'lang': t.lang, 'settings': t.settings(),
                        'available': True, 'reason': None, 'runs': {'16': [], '1': []},
                        'warmup': [], 'cold_start_s': [], 'snapshots': [], 'start_failures': [],
                        'left_after_stop': []}
               for t in chosen}
    started = datetime.datetime.now(datetime.timezone.utc)
    for rnd in range(rounds):
        order = chosen if rnd % 2 == 0 else list(reversed(chosen))
        for t in order:
            res = results[t.name]
            if not res['available']:
                continue
            res.setdefault('loadavg_before', []).append(round(os.getloadavg()[0], 2))
            res.setdefault('quiet_before_pct', []).append(wait_quiet())
            apache = Apache(base, t, APP_DIRS.get(t.lang) if t.lang else None)
            log(f'[round {rnd + 1}/{rounds}] {t.label}: starting Apache on port {apache.port} '
                f'(load average {os.getloadavg()[0]:.2f})')
            cold, why = apache.start()
            if cold is None and why.startswith('apache2 -k start failed'):
                # Counted as a failure, then tried once more on a new port (the
                # port chosen may have been taken by someone else meanwhile).
                res['start_failures'].append(why)
                log(f'  FAILED to start: {why}; trying once more')
                apache.stop()
                apache = Apache(base, t, APP_DIRS.get(t.lang) if t.lang else None)
                cold, why = apache.start()
            if cold is None:
                left = apache.stop()
                if rnd == 0 and t.optional:
                    res['available'] = False
                    res['reason'] = why
                    log(f'  not available: {why}')
                else:
                    res['start_failures'].append(why)
                    log(f'  FAILED to serve: {why}')
                if left:
                    res['left_after_stop'].append(left)
                continue
            res['cold_start_s'].append(cold)
            log(f'  first 200 after {cold:.3f} s; warm-up {warmup} s at 16 connections')
            res['warmup'].append(wrk(apache.port, t.path, 16, warmup))
            for conns in (16, 1):
                run = wrk(apache.port, t.path, conns, duration, apache)
                for _ in range(1):
                    if run.get('other_cpu_pct', 0) <= NOISY_PCT or 'wrk_failed' in run:
                        break
                    log(f'  c{conns}: other processes used {run["other_cpu_pct"]} % of the machine: '
                        'waiting for a quiet spell and running it again')
                    res.setdefault('noisy_runs', []).append(run)
                    wait_quiet()
                    run = wrk(apache.port, t.path, conns, duration, apache)
                res['runs'][str(conns)].append(run)
                log(f'  c{conns}: {run["rps"]} req/s, p50 {run["p50_ms"]} ms, p99 {run["p99_ms"]} ms, '
                    f'errors {errors_of(run)}, other CPU {run["other_cpu_pct"]} %'
                    + (f' (wrk: {run["wrk_failed"]})' if 'wrk_failed' in run else ''))
                if conns == 16:
                    res['snapshots'].append(snapshot(apache))
            tail = apache.last_error_line()
            left = apache.stop()
            if left:
                res['left_after_stop'].append(left)
                log(f'  processes still alive 20 s after stop: {left}')
            res.setdefault('error_log_tail', tail)
            time.sleep(1)
    info['loadavg_end'] = os.getloadavg()[0]
    report = {
        'kind': 'comparison',
        'command': args.command,
        'quick': quick,
        'only': sorted(only) if only else None,
        'started': started.isoformat(timespec='seconds'),
        'finished': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'machine': info,
        'settings': {
            'apache': dict(APACHE_SETTINGS),
            'passenger_max_pool_size': POOL_SIZE,
            'passenger_min_instances': MIN_INSTANCES,
            'wrk': {'16': ' '.join(wrk_cmd('PORT', '/', 16, duration)[:-1]),
                    '1': ' '.join(wrk_cmd('PORT', '/', 1, duration)[:-1])},
            'warmup_s': warmup, 'duration_s': duration, 'rounds': rounds,
        },
        'targets': results,
    }
    finish(report)
    shutil.rmtree(base, ignore_errors=True)
    return report


def finish(report):
    """Summaries, ratios and target checks; prints and writes the results."""
    for name, res in report['targets'].items():
        res['summary'] = {}
        for conns in ('16', '1'):
            runs = res['runs'][conns]
            res['summary'][conns] = {
                'rps': summarize([r['rps'] for r in runs]),
                'p50_ms': summarize([r['p50_ms'] for r in runs]),
                'p99_ms': summarize([r['p99_ms'] for r in runs]),
                'other_cpu_pct': summarize([r.get('other_cpu_pct') for r in runs]),
            }
        every = res['warmup'] + res['runs']['16'] + res['runs']['1']
        res['errors'] = {
            'non2xx': sum(r['non2xx'] for r in every),
            'socket': sum(sum(r['socket_errors'].values()) for r in every),
            'wrk_failures': sum(1 for r in every if 'wrk_failed' in r),
            'start_failures': len(res['start_failures']),
        }
        res['cold_start'] = summarize(res['cold_start_s'])
        res['memory'] = memory_summary(res['snapshots'])
    report['ratios'] = ratios(report['targets'])
    report['checks'] = checks(report['targets'])
    os.makedirs(RESULTS, exist_ok=True)
    # Quick or partial runs never overwrite the last full run's results.
    stem = 'latest' if not report['quick'] and not report['only'] else 'latest-partial'
    path = os.path.join(RESULTS, f'{stem}.json')
    with open(path, 'w') as f:
        json.dump(report, f, indent=1)
    md = markdown(report)
    with open(os.path.join(RESULTS, f'{stem}.md'), 'w') as f:
        f.write(md)
    print(md)
    log(f'bench: results in {path} and {os.path.join(RESULTS, stem + ".md")}')


def memory_summary(snapshots):
    """From the last snapshot after a 16-connection run: agents and app processes."""
    if not snapshots:
        return None
    snap = snapshots[-1]
    agents = snap['agents']

    def total(key, items):
        vals = [a.get(key) for a in items if a.get(key) is not None]
        return sum(vals) if vals else None

    apps = snap['apps']
    return {
        'agents': agents,
        'agent_rss_kib': total('rss', agents),
        'agent_pss_kib': total('pss', agents),
        'agent_private_dirty_kib': total('private_dirty', agents),
        'preloaders': snap['preloaders'],
        'app_processes': len(apps),
        'app_processes_each_round': [len(s['apps']) for s in snapshots],
        'app_rss_kib': summarize([a.get('rss') for a in apps]),
        'app_pss_kib': summarize([a.get('pss') for a in apps]),
        'app_private_dirty_kib': summarize([a.get('private_dirty') for a in apps]),
        'apache_workers': snap['apache_workers'],
    }


def med(targets, name, conns, key):
    res = targets.get(name)
    if not res or not res['available']:
        return None
    s = res['summary'][conns][key]
    return s['median'] if s else None


RATIO_PAIRS = [
    ('ours-wsgi', 'passenger-wsgi'),
    ('ours-wsgi', 'mod_wsgi-2x1'),
    ('ours-wsgi', 'mod_wsgi-6x1'),
    ('ours-rack', 'passenger-rack'),
    ('ours-node', 'passenger-node'),
    ('ours-wsgi', 'static'),
]


def ratios(targets):
    out = []
    for ours, theirs in RATIO_PAIRS:
        if ours not in targets or theirs not in targets:
            continue
        row = {'ours': ours, 'theirs': theirs}
        for conns in ('16', '1'):
            for key in ('rps', 'p50_ms', 'p99_ms'):
                a, b = med(targets, ours, conns, key), med(targets, theirs, conns, key)
                row[f'{key}_c{conns}'] = round(a / b, 3) if a is not None and b else None
        out.append(row)
    return out


def checks(targets):
    """The targets of issue 3, each met, missed or not measured."""
    out = []

    def check(what, ours, op, theirs, factor=1.0, unit=''):
        if ours is None or theirs is None:
            out.append({'target': what, 'met': None, 'detail': 'not measured'})
            return
        limit = theirs * factor
        met = ours >= limit if op == '>=' else ours <= limit
        def g(v):
            return f'{v:.0f}' if v >= 100 else f'{v:.3g}'

        out.append({'target': what, 'met': met,
                    'detail': f'ours {g(ours)}{unit} {op} {g(limit)}{unit} '
                              f'({factor:g} x {g(theirs)}{unit})'})

    ow = lambda conns, key: med(targets, 'ours-wsgi', conns, key)  # noqa: E731
    check('WSGI req/s at 16 conns >= 1.5 x Passenger', ow('16', 'rps'), '>=',
          med(targets, 'passenger-wsgi', '16', 'rps'), 1.5)
    for mw in ('mod_wsgi-2x1', 'mod_wsgi-6x1'):
        check(f'WSGI req/s at 16 conns >= {mw}', ow('16', 'rps'), '>=', med(targets, mw, '16', 'rps'))
        check(f'WSGI p99 at 16 conns <= {mw}', ow('16', 'p99_ms'), '<=', med(targets, mw, '16', 'p99_ms'),
              unit=' ms')
        for key in ('p50_ms', 'p99_ms'):
            check(f'WSGI {key[:3]} at 1 conn <= 1.2 x {mw}', ow('1', key), '<=', med(targets, mw, '1', key),
                  1.2, ' ms')
    check('Rack req/s at 16 conns >= 1.3 x Passenger', med(targets, 'ours-rack', '16', 'rps'), '>=',
          med(targets, 'passenger-rack', '16', 'rps'), 1.3)
    ours_agent = [targets[n]['memory']['agent_rss_kib'] for n in ('ours-wsgi', 'ours-rack', 'ours-node')
                  if n in targets and targets[n].get('memory')]
    theirs_agent = [targets[n]['memory']['agent_rss_kib'] for n in ('passenger-wsgi', 'passenger-rack')
                    if n in targets and targets[n].get('memory')]
    check('agent RSS <= 0.5 x Passenger watchdog + core', max(ours_agent) / 1024 if ours_agent else None, '<=',
          min(theirs_agent) / 1024 if theirs_agent else None, 0.5, ' MiB')
    for name, res in targets.items():
        if res['kind'] == 'ours' and res['available']:
            e = res['errors']
            n = e['non2xx'] + e['socket'] + e['wrk_failures'] + e['start_failures']
            out.append({'target': f'zero errors, {res["label"]}', 'met': n == 0,
                        'detail': f'{e["non2xx"]} non-2xx, {e["socket"]} socket errors, '
                                  f'{e["wrk_failures"]} failed wrk runs, {e["start_failures"]} failed starts'})
    return out


# --------------------------------------------------------------------------
# Markdown.


def fmt_num(v, digits=0):
    if v is None:
        return '-'
    if digits == 0:
        return f'{v:.0f}'
    return f'{v:.{digits}f}'


def fmt_ms(v):
    if v is None:
        return '-'
    return f'{v:.3f}' if v < 1 else f'{v:.2f}' if v < 10 else f'{v:.1f}'


def fmt_ratio(v):
    return '-' if v is None else f'{v:.2f}'


def markdown(report):
    if report.get('kind') == 'soak':
        return soak_markdown(report)
    m, s, t = report['machine'], report['settings'], report['targets']
    out = []
    out.append(f'Run {report["started"]} .. {report["finished"]} (UTC), commit {m["commit"]}'
               + (' — QUICK run (3 s, 1 round): not for publishing' if report['quick'] else ''))
    out.append('')
    out.append(f'Machine: {m["nproc"]} cores ({m["cpu"]}), {m["memory_gib"]} GiB, Linux {m["kernel"]}, '
               f'Debian {m["debian"]}, Apache {m["apache"]}; Passenger {m["passenger"]}, mod_wsgi {m["mod_wsgi"]}, '
               f'wrk {m["wrk"]}, {m["python"]}, {(m["ruby"] or "").split(" (")[0]}, Node {m["node"]}. '
               f'Load average (1 min) before the run: {m["loadavg_start"]:.2f}.')
    out.append('')
    a = s['apache']
    out.append(f'Settings, the same for every target: MPM {a["MPM"]} (StartServers {a["StartServers"]}, '
               f'ThreadsPerChild {a["ThreadsPerChild"]}, MaxRequestWorkers {a["MaxRequestWorkers"]}), '
               f'KeepAlive {a["KeepAlive"]} (MaxKeepAliveRequests {a["MaxKeepAliveRequests"]}, '
               f'KeepAliveTimeout {a["KeepAliveTimeout"]}), no access log, LogLevel {a["LogLevel"]}. '
               f'Load: `{s["wrk"]["16"]}` and `{s["wrk"]["1"]}`, each after a {s["warmup_s"]} s warm-up '
               f'at 16 connections, {s["rounds"]} round(s), targets alternating; median [min..max]. '
               f'"Other CPU" is the largest share of the machine that processes other than the target and '
               f'wrk used during a counted run (a run above {NOISY_PCT} % is run again once, after '
               f'waiting up to 15 s for a quiet second).')
    out.append('')
    out.append('| target | processes × threads allowed | app processes seen after c16 |')
    out.append('|---|---|---|')
    for res in t.values():
        mem = res.get('memory') or {}
        seen = mem.get('app_processes_each_round')
        out.append(f'| {res["label"]} | {res["settings"]} | '
                   f'{", ".join(map(str, seen)) if seen else "-"} |')
    out.append('')
    out.append('| target | conns | req/s | p50 ms | p99 ms | errors | other CPU % |')
    out.append('|---|---|---|---|---|---|---|')
    for res in t.values():
        if not res['available']:
            out.append(f'| {res["label"]} | | not available: {md_escape(res["reason"])} | | | | |')
            continue
        e = res['errors']
        err = e['non2xx'] + e['socket'] + e['wrk_failures'] + e['start_failures']
        for conns in ('16', '1'):
            sm = res['summary'][conns]
            rps = sm['rps']
            rps_text = (f'{fmt_num(rps["median"])} [{fmt_num(rps["min"])}..{fmt_num(rps["max"])}]'
                        if rps else 'no run')
            p50 = sm['p50_ms']['median'] if sm['p50_ms'] else None
            p99 = sm['p99_ms']['median'] if sm['p99_ms'] else None
            other = sm['other_cpu_pct']
            out.append(f'| {res["label"]} | {conns} | {rps_text} | {fmt_ms(p50)} | {fmt_ms(p99)} | '
                       f'{err if conns == "16" else ""} | {fmt_num(other["max"]) if other else "-"} |')
    out.append('')
    out.append('Ratios, ours / theirs (req/s: higher is better for us; latency: lower is better for us):')
    out.append('')
    out.append('| ours / theirs | req/s c16 | p50 c16 | p99 c16 | req/s c1 | p50 c1 | p99 c1 |')
    out.append('|---|---|---|---|---|---|---|')
    for r in report['ratios']:
        out.append(f'| {t[r["ours"]]["label"]} / {t[r["theirs"]]["label"]} | {fmt_ratio(r["rps_c16"])} | '
                   f'{fmt_ratio(r["p50_ms_c16"])} | {fmt_ratio(r["p99_ms_c16"])} | {fmt_ratio(r["rps_c1"])} | '
                   f'{fmt_ratio(r["p50_ms_c1"])} | {fmt_ratio(r["p99_ms_c1"])} |')
    out.append('')
    # The machine's speed drifts between the 10 s windows; the ratio within
    # each round shows how much of a ratio is that drift.
    out.append('Round by round (each round runs every target once), req/s at 16 connections, '
               'ours / theirs:')
    out.append('')
    for r in report['ratios']:
        ours_runs = t[r['ours']].get('runs', {}).get('16', [])
        theirs_runs = t[r['theirs']].get('runs', {}).get('16', [])
        per_round = [a['rps'] / b['rps'] for a, b in zip(ours_runs, theirs_runs) if a.get('rps') and b.get('rps')]
        if per_round:
            out.append(f'- {t[r["ours"]]["label"]} / {t[r["theirs"]]["label"]}: '
                       + ', '.join(f'{x:.2f}' for x in per_round))
    out.append('')
    out.append('Cold start, from `apache2 -k start` to the first 200 from the app (median [min..max]):')
    out.append('')
    out.append('| target | seconds |')
    out.append('|---|---|')
    for res in t.values():
        c = res.get('cold_start')
        if c:
            out.append(f'| {res["label"]} | {c["median"]:.3f} [{c["min"]:.3f}..{c["max"]:.3f}] |')
    out.append('')
    out.append('Memory after the last 16-connection run (MiB; RSS / PSS / private dirty):')
    out.append('')
    out.append('| target | agent processes | agents total | app processes | each app process, median [min..max] RSS | app PSS | app private dirty |')
    out.append('|---|---|---|---|---|---|---|')
    for res in t.values():
        mem = res.get('memory')
        if not mem or res['kind'] == 'static':
            continue
        agents = ', '.join(f'{a["role"]} {mib(a.get("rss"))}/{mib(a.get("pss"))}/{mib(a.get("private_dirty"))}'
                           for a in mem['agents']) or '-'
        if mem['preloaders']:
            agents += ', ' + ', '.join(f'preloader {mib(p.get("rss"))}/{mib(p.get("pss"))}/'
                                       f'{mib(p.get("private_dirty"))}' for p in mem['preloaders'])
        total = (f'{mib(mem["agent_rss_kib"])}/{mib(mem["agent_pss_kib"])}/{mib(mem["agent_private_dirty_kib"])}'
                 if mem['agents'] else '-')
        rss = mem['app_rss_kib']
        out.append(f'| {res["label"]} | {agents} | {total} | {mem["app_processes"]} | '
                   + (f'{mib(rss["median"])} [{mib(rss["min"])}..{mib(rss["max"])}]' if rss else '-')
                   + f' | {mib((mem["app_pss_kib"] or {}).get("median"))} | '
                   f'{mib((mem["app_private_dirty_kib"] or {}).get("median"))} |')
    out.append('')
    out.append('Errors (all runs and warm-ups; wrk counts non-2xx/3xx and socket errors):')
    out.append('')
    out.append('| target | non-2xx | socket errors | failed wrk runs | failed starts | left alive after stop |')
    out.append('|---|---|---|---|---|---|')
    for res in t.values():
        if not res['available']:
            continue
        e = res['errors']
        out.append(f'| {res["label"]} | {e["non2xx"]} | {e["socket"]} | {e["wrk_failures"]} | '
                   f'{e["start_failures"]} | {sum(len(x) for x in res["left_after_stop"])} |')
    out.append('')
    out.append('Targets (issue 3):')
    out.append('')
    for c in report['checks']:
        mark = {True: 'met', False: 'MISSED', None: 'not measured'}[c['met']]
        out.append(f'- {mark}: {c["target"]} — {c["detail"]}')
    out.append('')
    return '\n'.join(out)


def mib(kib):
    return '-' if kib is None else f'{kib / 1024:.1f}'


def md_escape(text):
    return (text or '').replace('|', '\\|').replace('\n', ' ')


# --------------------------------------------------------------------------
# The soak run.


def agent_state(apache):
    """Our agent's pid, memory, fds; its app processes; the Apache tree."""
    agents = apache.agent_pids()
    agent = agents[0] if agents else None
    preloaders, apps = our_app_processes(agent) if agent else ([], [])
    apache_pid = apache.pid()
    tree = descendants(apache_pid) if apache_pid else set()
    return {
        'agent_pid': agent,
        'agent_memory': memory(agent) if agent else None,
        'agent_fds': fd_count(agent) if agent else None,
        'agent_threads': thread_count(agent) if agent else None,
        'app_pids': apps,
        'preloader_pids': preloaders,
        'app_fds': {str(p): fd_count(p) for p in apps},
        'apache_processes': len(tree | ({apache_pid} if apache_pid else set())),
        'all_processes': len(tree | set(apps) | set(preloaders) | ({agent} if agent else set())
                             | ({apache_pid} if apache_pid else set())),
    }


SOAK_CLIENT = os.environ.get('BENCH_SOAK_CLIENT',
                             os.path.join(BENCH, 'soak-client', 'target', 'release', 'soak-client'))
SOAK_TIMEOUT_S = 10  # per request, a retry included
SOAK_BIG = 1024 * 1024  # bytes of /big and of the control's big.bin


def freeze_soak_client(base):
    """A copy of the load generator for this run, like freeze_module."""
    path = os.path.join(base, 'soak-client')
    shutil.copy2(SOAK_CLIENT, path)
    return path


def soak_client_cmd(client, port, mix, conns, seconds):
    return [client, '--url', f'http://127.0.0.1:{port}', '--connections', str(conns),
            '--duration', str(seconds), '--timeout', str(SOAK_TIMEOUT_S), '--mix', mix]


def parse_soak(stdout):
    """The load generator's summary: its one `SOAK {json}` line."""
    m = re.search(r'^SOAK (\{.*\})$', stdout or '', re.M)
    return json.loads(m.group(1)) if m else None


def run_soak(args):
    duration = args.duration
    conns = args.conns
    graceful_at = duration / 3
    restart_at = 2 * duration / 3
    base = tempfile.mkdtemp(prefix='mp-soak-')
    os.chmod(base, 0o755)
    freeze_module(base)
    client = freeze_soak_client(base)
    info = machine()
    settings = dict(APACHE_SETTINGS) if args.apache_defaults else SOAK_APACHE_SETTINGS
    # The control first: Apache alone serving static files, the same load and
    # the same graceful restart, so that what Apache does by itself shows.
    plan = []
    if args.control:
        plan.append(('control', Target('static-soak', 'static file (Apache alone, the control)', 'static')))
    for lang in args.apps.split(','):
        plan.append((lang, Target(f'ours-{lang}-soak', f'ours, {LANG_NAMES[lang]} soak app', 'ours', lang)))
    runs = {}
    started = datetime.datetime.now(datetime.timezone.utc)
    for key, target in plan:
        control = target.kind == 'static'
        mix = 'static' if control else 'app'
        if not control:
            target.expect = b'hello'
        apache = Apache(base, target, None if control else SOAK_DIRS[key], settings)
        if control:
            big = os.path.join(apache.dir, 'static', 'big.bin')
            with open(big, 'wb') as f:
                f.write(b'x' * SOAK_BIG)
            os.chmod(big, 0o644)
        else:
            os.makedirs(os.path.join(apache.app, 'tmp'), exist_ok=True)
            os.chmod(os.path.join(apache.app, 'tmp'), 0o755)
        log(f'soak {key}: starting Apache on port {apache.port}')
        cold, why = apache.start()
        if cold is None:
            apache.stop()
            runs[key] = {'label': target.label, 'control': control, 'available': False, 'reason': why}
            log(f'  not available: {why}')
            continue
        log('  warm-up: 5 s of the same mix')
        warm = subprocess.run(soak_client_cmd(client, apache.port, mix, conns, 5),
                              stdout=subprocess.PIPE, text=True, timeout=120)
        time.sleep(3)  # the same pause as before `after`, so both see the same idle state
        before = agent_state(apache)
        if not control:
            log(f'  before: agent {before["agent_pid"]} RSS {mib((before["agent_memory"] or {}).get("rss"))} MiB, '
                f'{before["agent_fds"]} fds, {len(before["app_pids"])} app processes, '
                f'{before["all_processes"]} processes in all')
        cmd = soak_client_cmd(client, apache.port, mix, conns, duration)
        t0 = time.monotonic()
        # The client's progress lines (stderr) go to ours as they come.
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        samples, events = [], []
        done_graceful = done_restart = False
        while proc.poll() is None and time.monotonic() - t0 < duration + 60:
            now = time.monotonic() - t0
            state = agent_state(apache)
            samples.append({'t': round(now, 1), 'agent_pid': state['agent_pid'],
                            'agent_rss_kib': (state['agent_memory'] or {}).get('rss'),
                            'agent_fds': state['agent_fds'], 'agent_threads': state['agent_threads'],
                            'app_processes': len(state['app_pids']),
                            'apache_processes': state['apache_processes']})
            if not done_graceful and args.graceful and now >= graceful_at:
                done_graceful = True
                out = apache.ctl('graceful')
                events.append({'t': round(now, 1), 'event': 'apache2 -k graceful', 'rc': out.returncode,
                               'agent_pid_before': state['agent_pid'], 'app_pids_before': state['app_pids']})
                log(f'  {now:.0f} s: apache2 -k graceful (rc {out.returncode})')
            if not control and not done_restart and args.restart and now >= restart_at:
                done_restart = True
                path = os.path.join(apache.app, 'tmp', 'restart.txt')
                with open(path, 'a'):
                    pass
                os.utime(path)
                events.append({'t': round(now, 1), 'event': 'touch tmp/restart.txt',
                               'app_pids_before': state['app_pids']})
                log(f'  {now:.0f} s: touch tmp/restart.txt')
            time.sleep(1)
        try:
            stdout, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, _ = proc.communicate()
        time.sleep(3)
        after = agent_state(apache)
        result = parse_soak(stdout)
        restart_before = next((e['app_pids_before'] for e in events if e['event'].startswith('touch')), [])
        graceful_event = next((e for e in events if e['event'].endswith('graceful')), {})
        if result:
            log(f'  {result["requests"]} requests: {result["failed"]} failed, {result["retried"]} retried after '
                f'a keep-alive close (at {", ".join(f"{s} s" for s in result["retried_at_s"]) or "-"})')
        else:
            log(f'  the load generator gave no summary (exit {proc.returncode})')
        if not control:
            log(f'  after: agent {after["agent_pid"]} RSS {mib((after["agent_memory"] or {}).get("rss"))} MiB, '
                f'{after["agent_fds"]} fds, {len(after["app_pids"])} app processes, '
                f'{after["all_processes"]} processes in all')
        lines = apache.error_log().splitlines()
        tail = lines[-15:]
        warnings = [line for line in lines if re.search(r':(warn|error|crit|alert|emerg)\]', line)]
        left = apache.stop()
        runs[key] = {
            'label': target.label,
            'control': control,
            'available': True,
            'cmd': ' '.join(cmd),
            'warmup': parse_soak(warm.stdout),
            'client': result,
            'client_exit': proc.returncode,
            # A missing summary is a failure of the run, not zero failures.
            'failed_requests': result['failed'] if result else None,
            'before': before,
            'after': after,
            'samples': samples,
            'events': events,
            'agent_survived_graceful': bool(graceful_event) and graceful_event.get('agent_pid_before') == after['agent_pid'],
            'app_restarted': bool(restart_before) and not (set(restart_before) & set(after['app_pids'])),
            'app_pids_kept_after_restart_txt': sorted(set(restart_before) & set(after['app_pids'])),
            'left_after_stop': left,
            'error_log_tail': tail,
            'error_log_warnings': len(warnings),
            'error_log_warning_sample': warnings[:10],
        }
        time.sleep(1)
    report = {
        'kind': 'soak',
        'command': args.command,
        'started': started.isoformat(timespec='seconds'),
        'finished': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'machine': dict(info, loadavg_end=os.getloadavg()[0]),
        'settings': {'duration_s': duration, 'connections': conns, 'timeout_s': SOAK_TIMEOUT_S,
                     'control': args.control,
                     'graceful_at_s': graceful_at if args.graceful else None,
                     'restart_txt_at_s': restart_at if args.restart else None,
                     'apache': settings,
                     'passenger_max_pool_size': POOL_SIZE, 'passenger_min_instances': MIN_INSTANCES},
        'runs': runs,
    }
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, 'latest-soak.json')
    with open(path, 'w') as f:
        json.dump(report, f, indent=1)
    md = soak_markdown(report)
    with open(os.path.join(RESULTS, 'latest-soak.md'), 'w') as f:
        f.write(md)
    print(md)
    log(f'soak: results in {path}')
    shutil.rmtree(base, ignore_errors=True)
    return report


def soak_failed(run):
    """Whether a soak run counts as failed: a failed request, no summary from
    the load generator, or a control that could not be started."""
    if not run['available']:
        return run.get('control', False)
    return run.get('failed_requests') != 0


def soak_markdown(report):
    s, m = report['settings'], report['machine']
    control = s.get('control')
    out = [f'Soak run {report["started"]} .. {report["finished"]} (UTC), commit {m["commit"]}: '
           f'{s["duration_s"]} s at {s["connections"]} connections'
           + (', first against Apache alone serving static files (the control), then' if control else '')
           + ' against our module, '
           + (f'`apache2 -k graceful` at {s["graceful_at_s"]:.0f} s, ' if s['graceful_at_s'] else 'no graceful restart, ')
           + (f'`touch tmp/restart.txt` at {s["restart_txt_at_s"]:.0f} s (our apps only). ' if s['restart_txt_at_s']
              else 'no restart.txt. ')
           + f'Load: `bench/soak-client`, HTTP/1.1 keep-alive, {s.get("timeout_s", 10)} s timeout per request; '
           f'mix per 10 requests: 7 GET / (5 bytes), 1 GET /big (1 MiB), '
           f'1 GET /slow (200 ms), 1 POST /echo (100 KiB body)'
           + ('; the control: 9 GET /hello.txt (6 bytes), 1 GET /big.bin (1 MiB)' if control else '')
           + '; every body checked. '
           f'Machine: {m["nproc"]} cores, {m["memory_gib"]} GiB, Linux {m["kernel"]}, Apache {m["apache"]}. '
           f'Apache: MPM event, StartServers {s["apache"]["StartServers"]}, ThreadsPerChild '
           f'{s["apache"]["ThreadsPerChild"]}, MinSpareThreads {s["apache"]["MinSpareThreads"]}, MaxSpareThreads '
           f'{s["apache"]["MaxSpareThreads"]}, MaxRequestWorkers {s["apache"]["MaxRequestWorkers"]}, KeepAlive '
           f'{s["apache"]["KeepAlive"]}; PassengerMaxPoolSize {s["passenger_max_pool_size"]}, '
           f'PassengerMinInstances {s["passenger_min_instances"]}.', '']
    out.append('| run | requests | failed | retried after a keep-alive close | non-2xx | wrong bodies | '
               'other failures | req/s | p50 ms | p99 ms | max ms |')
    out.append('|---|---|---|---|---|---|---|---|---|---|---|')
    notes = []
    for r in report['runs'].values():
        if not r['available']:
            out.append(f'| {r["label"]} | not available: {md_escape(r["reason"])} | | | | | | | | | |')
            continue
        c = r.get('client')
        if not c:
            out.append(f'| {r["label"]} | no summary from the load generator (exit {r.get("client_exit")}) '
                       '| | | | | | | | | |')
            continue
        k = c['failed_by_kind']
        other = c['failed'] - k['status'] - k['body']
        out.append(f'| {r["label"]} | {c["requests"]} | {c["failed"]} | {c["retried"]} | {k["status"]} | '
                   f'{k["body"]} | {other} | {fmt_num(c["rps"])} | {fmt_ms(c["p50_ms"])} | {fmt_ms(c["p99_ms"])} | '
                   f'{fmt_ms(c["max_ms"])} |')
        if c['retried']:
            at = ', '.join(f'{sec} s: {n}' for sec, n in c['retried_at_s'].items())
            notes.append(f'- {r["label"]}: retries by second of the run: {at}')
        if c['failed']:
            kinds = ', '.join(f'{n} {kind}' for kind, n in k.items() if n)
            notes.append(f'- {r["label"]}: failed: {kinds}')
            for kind, text in c['first_failures'].items():
                notes.append(f'  - first {kind}: {md_escape(text)}')
    out.append('')
    out.append('Retried after a keep-alive close: Apache\'s event MPM closes idle keep-alive connections when a '
               'graceful restart retires a child; a request that meets such a close was never read by the '
               'server, and is sent again on a new connection, as RFC 9112 §9.3.1 allows and as curl, browsers '
               'and Go\'s net/http do; the control row shows Apache alone does the same.')
    out.append('')
    if notes:
        out += notes
        out.append('')
    apps = [r for r in report['runs'].values() if r['available'] and not r.get('control')]
    if apps:
        out.append('| app | agent RSS start → end (MiB) | agent fds before → after | app processes before → after | '
                   'all processes before → after | agent kept across graceful | app restarted by restart.txt |')
        out.append('|---|---|---|---|---|---|---|')
    phases = []
    for r in apps:
        b, a = r['before'], r['after']
        out.append(f'| {r["label"]} | {mib((b["agent_memory"] or {}).get("rss"))} → '
                   f'{mib((a["agent_memory"] or {}).get("rss"))} | {b["agent_fds"]} → {a["agent_fds"]} | '
                   f'{len(b["app_pids"])} → {len(a["app_pids"])} | {b["all_processes"]} → {a["all_processes"]} | '
                   f'{"yes" if r["agent_survived_graceful"] else "no"} | '
                   f'{"yes" if r["app_restarted"] else "no (pids kept: " + str(r["app_pids_kept_after_restart_txt"]) + ")"} |')
        under = [x for x in r['samples'] if x['t'] < (s['graceful_at_s'] or s['duration_s'])]
        if under and r['samples']:
            first, last = under[-1], r['samples'][-1]
            phases.append(f'| {r["label"]} | {mib(first["agent_rss_kib"])} MiB, {first["agent_fds"]} fds, '
                          f'{first.get("agent_threads")} threads | {mib(last["agent_rss_kib"])} MiB, '
                          f'{last["agent_fds"]} fds, {last.get("agent_threads")} threads | '
                          f'{mib(max(x["agent_rss_kib"] or 0 for x in r["samples"]))} MiB |')
    out.append('')
    if phases:
        out.append('Under load (the agent keeps one connection, and thread, per Apache worker thread that has '
                   'served a request, so its fds and RSS follow the number of Apache threads; the fair '
                   'comparison is load against load):')
        out.append('')
        out.append('| app | agent at the last sample before the graceful restart | agent at the last sample | '
                   'agent RSS peak |')
        out.append('|---|---|---|---|')
        out += phases
        out.append('')
    for r in report['runs'].values():
        if r.get('available') and r.get('left_after_stop'):
            out.append(f'- {r["label"]}: processes alive 20 s after stop: {r["left_after_stop"]}')
    return '\n'.join(out) + '\n'


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('mode', nargs='?', default='run', choices=('run', 'soak', 'markdown'))
    parser.add_argument('file', nargs='?', help='markdown: the results JSON')
    parser.add_argument('--quick', action='store_true', default=os.environ.get('BENCH_QUICK') == '1',
                        help='3 s runs, 1 round (also BENCH_QUICK=1)')
    parser.add_argument('--rounds', type=int, default=int(os.environ.get('BENCH_ROUNDS', '5')),
                        help='rounds of every target, medians taken over them (default 5; also '
                             'BENCH_ROUNDS): one 10 s window moves by up to 25 %% on a shared machine')
    parser.add_argument('--only', default=os.environ.get('BENCH_ONLY'),
                        help='comma-separated target names (also BENCH_ONLY)')
    parser.add_argument('--duration', type=int, default=int(os.environ.get('SOAK_SECONDS', '60')),
                        help='soak: seconds (default 60)')
    parser.add_argument('--conns', type=int, default=64, help='soak: connections (default 64)')
    parser.add_argument('--no-graceful', dest='graceful', action='store_false',
                        help='soak: leave out the graceful restart (to tell its errors from others)')
    parser.add_argument('--no-restart', dest='restart', action='store_false',
                        help='soak: leave out the restart.txt')
    parser.add_argument('--apache-defaults', action='store_true',
                        help="soak: Debian's default thread counts instead of ones sized for the load")
    parser.add_argument('--apps', default=os.environ.get('SOAK_APPS', 'wsgi,rack,node'),
                        help='soak: which soak apps (default wsgi,rack,node; those our module cannot serve '
                             'are reported as not available)')
    parser.add_argument('--no-control', dest='control', action='store_false',
                        help='soak: leave out the control run (the same load against Apache alone serving '
                             'static files)')
    args = parser.parse_args()
    args.command = os.environ.get('BENCH_COMMAND') or ' '.join(['bench/bench.py'] + sys.argv[1:])
    if args.mode == 'markdown':
        with open(args.file) as f:
            report = json.load(f)
        if report.get('kind') == 'comparison':
            report['checks'] = checks(report['targets'])
        print(markdown(report))
        return 0
    for tool in (APACHE,) if args.mode == 'soak' else ('wrk', APACHE):
        if not shutil.which(tool):
            log(f'bench: {tool} is missing: run `make bench`, which installs it')
            return 2
    if args.mode == 'soak':
        if not os.access(SOAK_CLIENT, os.X_OK):
            log(f'bench: {SOAK_CLIENT} is missing: run `make bench SOAK=1`, which builds it '
                '(or `cargo build --release --manifest-path bench/soak-client/Cargo.toml`)')
            return 2
        report = run_soak(args)
        failed = [r['label'] for r in report['runs'].values() if soak_failed(r)]
        if failed:
            log(f'soak: failed requests in: {", ".join(failed)}')
        return 1 if failed else 0
    report = run_comparison(args)
    # Any non-2xx answer, socket error or failed start fails the run.
    failed = [res['label'] for res in report['targets'].values()
              if res['available'] and any(res['errors'].values())]
    if failed:
        log(f'bench: errors in: {", ".join(failed)}')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())

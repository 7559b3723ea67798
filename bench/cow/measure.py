#!/usr/bin/env python3
"""Copy-on-write and spawn speed of smart spawning, measured through a real
Apache with our module (release build).

For each language (Rack, WSGI) and spawn method (smart, direct), starts an
Apache whose app holds ~50 MB of data loaded at startup, brings up 4 worker
processes (PassengerMinInstances 4), then reports:
  - the total PSS (/proc/PID/smaps_rollup) of the 4 workers (and the
    preloader, for smart), and the PSS of one worker started alone;
  - how long spawning each worker took (from the agent's MP0301 lines).
Targets (issue 4): smart PSS(4 workers) <= 1.6 x PSS(one worker alone);
spawning workers 2..4 smart >= 3x faster than direct.

Usage: bench/cow/measure.py [--module target/release/mod_passenger.so]
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
MODS = '/usr/lib/apache2/modules'


def free_port():
    import socket
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return port


def pss_kb(pid):
    with open('/proc/%d/smaps_rollup' % pid) as f:
        for line in f:
            if line.startswith('Pss:'):
                return int(line.split()[1])
    return 0


def children(ppid):
    out = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/status' % entry) as f:
                status = f.read()
        except OSError:
            continue
        m = re.search(r'^PPid:\s+(\d+)', status, re.M)
        if m and int(m.group(1)) == ppid:
            out.append(int(entry))
    return out


def run(module, kind, method, instances):
    tmp = tempfile.mkdtemp(prefix='mp-cow-')
    os.chmod(tmp, 0o755)
    app = os.path.join(tmp, 'app')
    os.makedirs(os.path.join(app, 'public'))
    shutil.copy(os.path.join(HERE, 'config.ru' if kind == 'rack' else 'passenger_wsgi.py'), app)
    for root, dirs, files in os.walk(tmp):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)
    os.makedirs(os.path.join(tmp, 'registry'), mode=0o755)
    port = free_port()
    user = 'User www-data\nGroup www-data\n' if os.geteuid() == 0 else ''
    conf = os.path.join(tmp, 'httpd.conf')
    with open(conf, 'w') as f:
        f.write('''ServerRoot "{tmp}"
ServerName 127.0.0.1
Listen 127.0.0.1:{port}
PidFile {tmp}/httpd.pid
ErrorLog {tmp}/error.log
LogLevel info
DefaultRuntimeDir {tmp}
{user}LoadModule mpm_event_module {mods}/mod_mpm_event.so
LoadModule authz_core_module {mods}/mod_authz_core.so
LoadModule passenger_module {module}
PassengerInstanceRegistryDir {tmp}/registry
PassengerMaxPoolSize 8
<VirtualHost 127.0.0.1:{port}>
    DocumentRoot {app}/public
    PassengerSpawnMethod {method}
    PassengerMinInstances {instances}
    <Directory {app}/public>
        Require all granted
    </Directory>
</VirtualHost>
'''.format(tmp=tmp, port=port, user=user, mods=MODS, module=module, app=app,
           method=method, instances=instances))
    subprocess.run(['/usr/sbin/apache2', '-f', conf, '-k', 'start'], check=True)
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen('http://127.0.0.1:%d/' % port, timeout=30).read()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
        log = ''
        while time.time() < deadline:
            with open(os.path.join(tmp, 'error.log')) as f:
                log = f.read()
            if len(re.findall(r'MP0301: started a (?:forked )?process of', log)) >= instances:
                break
            time.sleep(0.1)
        time.sleep(1.0)
        spawn_ms = [int(x) for x in re.findall(r'MP0301: started a (?:forked )?process of .* in (\d+) ms', log)]
        preloader_ms = [int(x) for x in re.findall(r'MP0301: started the preloader of .* in (\d+) ms', log)]
        pids = [int(p) for p in re.findall(r'MP0301: started (?:a|a forked|the preloader of)? ?process of .*? \(pid (\d+)\)', log)]
        pids += [int(p) for p in re.findall(r'MP0301: started the preloader of .*? \(pid (\d+)\)', log)]
        pss = {pid: pss_kb(pid) for pid in set(pids) if os.path.exists('/proc/%d' % pid)}
        return {'spawn_ms': spawn_ms, 'preloader_ms': preloader_ms, 'pss_kb': pss,
                'preloaders': len(preloader_ms)}
    finally:
        subprocess.run(['/usr/sbin/apache2', '-f', conf, '-k', 'stop'])
        time.sleep(2)
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--module', default=os.path.join(REPO, 'target/release/mod_passenger.so'))
    args = parser.parse_args()
    results = {}
    for kind in ('rack', 'wsgi'):
        alone = run(args.module, kind, 'direct', 1)
        one = sum(alone['pss_kb'].values())
        smart = run(args.module, kind, 'smart', 4)
        direct = run(args.module, kind, 'direct', 4)
        smart_total = sum(smart['pss_kb'].values())
        later_smart = statistics.median(smart['spawn_ms'][1:4]) if len(smart['spawn_ms']) >= 4 else None
        later_direct = statistics.median(direct['spawn_ms'][1:4]) if len(direct['spawn_ms']) >= 4 else None
        results[kind] = {
            'pss_one_worker_alone_mb': round(one / 1024, 1),
            'pss_4_smart_workers_plus_preloader_mb': round(smart_total / 1024, 1),
            'pss_ratio': round(smart_total / one, 2) if one else None,
            'pss_4_direct_workers_mb': round(sum(direct['pss_kb'].values()) / 1024, 1),
            'spawn_ms_smart_workers': smart['spawn_ms'],
            'spawn_ms_preloader': smart['preloader_ms'],
            'spawn_ms_direct_workers': direct['spawn_ms'],
            'speedup_workers_2_to_4': round(later_direct / later_smart, 1) if later_smart and later_direct else None,
        }
    print(json.dumps(results, indent=2))
    ok = all((r['pss_ratio'] or 99) <= 1.6 and (r['speedup_workers_2_to_4'] or 0) >= 3 for r in results.values())
    print('targets (PSS ratio <= 1.6, spawn speed-up >= 3x):', 'met' if ok else 'MISSED')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())

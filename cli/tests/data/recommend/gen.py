#!/usr/bin/env python3
"""Writes the recorded flows of the `shop` application (shop-flows.jsonl: the learning
window; shop-replay.jsonl: a later window). Deterministic; rerun to regenerate."""
import json, datetime

BASE = datetime.datetime(2026, 11, 20, 0, 0, 0, tzinfo=datetime.timezone.utc)

def ts(sec):
    t = BASE + datetime.timedelta(seconds=sec)
    return t.strftime('%Y-%m-%dT%H:%M:%S.') + f"{t.microsecond // 1000:03d}Z"

PODS = {
    'frontend-7d9f-a': ('shop', 'Deployment/frontend', '10.0.1.10', {'app': 'frontend', 'tier': 'web', 'pod-template-hash': '7d9f'}),
    'frontend-7d9f-b': ('shop', 'Deployment/frontend', '10.0.1.11', {'app': 'frontend', 'tier': 'web', 'pod-template-hash': '7d9f'}),
    'api-5c4b-a': ('shop', 'Deployment/api', '10.0.1.20', {'app': 'api', 'tier': 'backend', 'pod-template-hash': '5c4b'}),
    'api-5c4b-b': ('shop', 'Deployment/api', '10.0.1.21', {'app': 'api', 'tier': 'backend', 'pod-template-hash': '5c4b'}),
    'report-29400000-x7k': ('shop', 'CronJob/report', '10.0.1.30', {'app': 'report', 'job-name': 'report-29400000'}),
    'db-0': ('data', 'StatefulSet/db', '10.0.2.10', {'app': 'db', 'statefulset.kubernetes.io/pod-name': 'db-0'}),
    'cache-6f8d-a': ('data', 'Deployment/cache', '10.0.2.20', {'app': 'cache', 'pod-template-hash': '6f8d'}),
    'coredns-abc-a': ('kube-system', 'Deployment/coredns', '10.0.3.10', {'k8s-app': 'kube-dns', 'pod-template-hash': 'abc'}),
}

def pod(name, port):
    ns, wl, ip, labels = PODS[name]
    return {'ip': ip, 'port': port, 'identity': 300, 'namespace': ns, 'pod': name, 'workload': wl, 'labels': labels}

def ext(ip, port, entity='world'):
    return {'ip': ip, 'port': port, 'identity': 2, 'entity': entity}

def rec(t, kind, direction, proto, src, dst, verdict='forwarded', names=(), bytes_=(0, 0), reason=None):
    return {'version': 1, 'time': ts(t), 'start': ts(t), 'kind': kind, 'verdict': verdict,
            'drop_reason': reason, 'direction': direction, 'ip_version': 4, 'protocol': proto,
            'source': src, 'destination': dst, 'decided_by': 'default-allow', 'policy': None,
            'rule_id': 4294967294, 'packets': {'forward': 1, 'reverse': 0},
            'bytes': {'forward': bytes_[0], 'reverse': bytes_[1]}, 'tcp_flags': ['SYN'] if proto == 'TCP' else [],
            'dns_names': list(names), 'node': 'node-a'}

def connection(out, t, proto, src, dst, src_is_pod, dst_is_pod, names=(), size=(500, 1500), svc_dst=None):
    """A connection as the agent records it: egress record at the source (with the Service
    address when it went to one), ingress record at the destination, end record with bytes."""
    if src_is_pod:
        out.append(rec(t, 'new', 'egress', proto, src, svc_dst or dst, names=names))
    if dst_is_pod:
        out.append(rec(t, 'new', 'ingress', proto, src, dst))
    end_dir = 'egress' if src_is_pod else 'ingress'
    out.append(rec(t + 2, 'end', end_dir, proto, src, svc_dst or dst, names=names, bytes_=size))

def window(start, hours):
    out = []
    for h in range(hours):
        t0 = start + h * 3600
        for i, fe in enumerate(['frontend-7d9f-a', 'frontend-7d9f-b']):
            api = ['api-5c4b-a', 'api-5c4b-b'][i]
            connection(out, t0 + 10 + i, 'TCP', pod(fe, 40000 + h), pod(api, 9000), True, True,
                       svc_dst=ext('10.96.0.20', 80, 'cidr'))
            connection(out, t0 + 20 + i, 'UDP', pod(fe, 50000 + h), pod('coredns-abc-a', 53), True, True)
            connection(out, t0 + 30 + i, 'TCP', ext('203.0.113.5', 51000 + h), pod(fe, 8080), False, True)
        for api in ['api-5c4b-a', 'api-5c4b-b']:
            connection(out, t0 + 40, 'TCP', pod(api, 41000 + h), pod('db-0', 5432), True, True,
                       svc_dst=ext('10.96.0.30', 5432, 'cidr'))
            connection(out, t0 + 41, 'TCP', pod(api, 42000 + h), pod('cache-6f8d-a', 6379), True, True)
            connection(out, t0 + 42, 'UDP', pod(api, 43000 + h), pod('coredns-abc-a', 53), True, True)
            for k, ip in enumerate(['93.184.216.34', '93.184.216.35']):
                connection(out, t0 + 43 + k, 'TCP', pod(api, 44000 + h), ext(ip, 443), True, False,
                           names=['api.payments.example.'])
            connection(out, t0 + 45, 'TCP', pod(api, 45000 + h), ext('198.51.100.7', 443), True, False)
        # The kubelet probes the API: node traffic, never learned.
        out.append(rec(t0 + 50, 'new', 'ingress', 'TCP', ext('192.168.1.10', 33000, 'host'), pod('api-5c4b-a', 9000)))
        # The hourly report job calls the API through its Service.
        connection(out, t0 + 60, 'TCP', pod('report-29400000-x7k', 46000 + h), pod('api-5c4b-a', 9000), True, True,
                   svc_dst=ext('10.96.0.20', 80, 'cidr'))
        connection(out, t0 + 61, 'UDP', pod('report-29400000-x7k', 47000 + h), pod('coredns-abc-a', 53), True, True)
        # The frontend tries the database directly; today's policy denies it.
        out.append(rec(t0 + 70, 'deny', 'ingress', 'TCP', pod('frontend-7d9f-a', 48000 + h), pod('db-0', 5432),
                       verdict='dropped', reason='policy-denied'))
    return out

learn = window(0, 12)
# What a real log also holds: a record from an older agent for a workload the manifests no
# longer have, an unparseable time, and a torn line.
lines = [json.dumps(r, sort_keys=True) for r in learn]
ghost = rec(100, 'new', 'egress', 'TCP', {'ip': '10.0.9.9', 'port': 1, 'identity': 300, 'namespace': 'shop', 'pod': 'ghost-1', 'workload': 'Deployment/ghost'}, pod('api-5c4b-a', 9000))
lines.insert(5, json.dumps(ghost, sort_keys=True))
bad_time = rec(101, 'new', 'egress', 'TCP', pod('api-5c4b-a', 1), pod('db-0', 5432))
bad_time['time'] = 'yesterday'
lines.insert(9, json.dumps(bad_time, sort_keys=True))
lines.insert(13, lines[13][: len(lines[13]) // 2])
open('shop-flows.jsonl', 'w').write('\n'.join(lines) + '\n')
replay = window(12 * 3600, 6)
open('shop-replay.jsonl', 'w').write('\n'.join(json.dumps(r, sort_keys=True) for r in replay) + '\n')

#!/usr/bin/env bash
# A 3-member etcd cluster on loopback with mutual TLS (client and peer), for measuring etcd
# beside skv on the same machine. See docs/BENCHMARKS.md, "Replication".
#
#   benches/load/etcd/etcd3.sh start DIR   # PKI (skv certs init) + 3 members, data in DIR
#   benches/load/etcd/etcd3.sh env DIR     # prints ETCDCTL_* exports for etcdctl
#   benches/load/etcd/etcd3.sh stop DIR    # kills the members started from DIR
#
# Needs Debian's etcd-server and etcd-client (apt-get install -y etcd-server etcd-client)
# and an `skv` on PATH or in $SKV. The certificates are skv's dev PKI (P-256, naming
# 127.0.0.1 and localhost; node certificates carry both serverAuth and clientAuth, as etcd's
# peers need). Members listen on 127.0.0.1:23791-23793 (clients) and :23801-23803 (peers).
# Like skv's nodes, each member fsyncs its log before acknowledging (etcd always does).
set -euo pipefail

cmd=${1:?usage: etcd3.sh start|env|stop DIR}
dir=${2:?usage: etcd3.sh start|env|stop DIR}
skv=${SKV:-skv}
endpoints=https://127.0.0.1:23791,https://127.0.0.1:23792,https://127.0.0.1:23793

case "$cmd" in
start)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [ ! -f "$dir/pki/ca.pem" ]; then
        "$skv" certs init --dir "$dir/pki" --cluster etcd --nodes n1,n2,n3 --clients alice >/dev/null
    fi
    cluster=n1=https://127.0.0.1:23801,n2=https://127.0.0.1:23802,n3=https://127.0.0.1:23803
    for i in 1 2 3; do
        etcd --name "n$i" --data-dir "$dir/n$i" \
            --listen-client-urls "https://127.0.0.1:2379$i" \
            --advertise-client-urls "https://127.0.0.1:2379$i" \
            --listen-peer-urls "https://127.0.0.1:2380$i" \
            --initial-advertise-peer-urls "https://127.0.0.1:2380$i" \
            --initial-cluster "$cluster" --initial-cluster-state new \
            --initial-cluster-token skv-bench \
            --client-cert-auth --trusted-ca-file "$dir/pki/ca.pem" \
            --cert-file "$dir/pki/nodes/n$i.pem" --key-file "$dir/pki/nodes/n$i-key.pem" \
            --peer-client-cert-auth --peer-trusted-ca-file "$dir/pki/ca.pem" \
            --peer-cert-file "$dir/pki/nodes/n$i.pem" --peer-key-file "$dir/pki/nodes/n$i-key.pem" \
            --logger zap --log-outputs "$dir/n$i.log" \
            >/dev/null 2>&1 &
        echo $! >"$dir/n$i.pid"
    done
    export ETCDCTL_API=3 ETCDCTL_ENDPOINTS=$endpoints ETCDCTL_CACERT=$dir/pki/ca.pem \
        ETCDCTL_CERT=$dir/pki/clients/alice.pem ETCDCTL_KEY=$dir/pki/clients/alice-key.pem
    for _ in $(seq 100); do
        if etcdctl endpoint health >/dev/null 2>&1; then
            etcdctl endpoint status -w table
            exit 0
        fi
        sleep 0.2
    done
    echo "etcd did not become healthy; see $dir/n*.log" >&2
    exit 1
    ;;
env)
    dir=$(cd "$dir" && pwd)
    echo "export ETCDCTL_API=3 ETCDCTL_ENDPOINTS=$endpoints ETCDCTL_CACERT=$dir/pki/ca.pem" \
        "ETCDCTL_CERT=$dir/pki/clients/alice.pem ETCDCTL_KEY=$dir/pki/clients/alice-key.pem"
    ;;
stop)
    for i in 1 2 3; do
        if [ -f "$dir/n$i.pid" ]; then
            kill "$(cat "$dir/n$i.pid")" 2>/dev/null || true
            rm -f "$dir/n$i.pid"
        fi
    done
    ;;
*)
    echo "usage: etcd3.sh start|env|stop DIR" >&2
    exit 2
    ;;
esac

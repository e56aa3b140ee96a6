#!/bin/bash
# A load test through two real faults: the embedded PostgreSQL's postmaster killed -9,
# then the obrol server itself killed -9 and started again on the same data folder.
cd "$(dirname "$0")/.."
T=${T:-$(mktemp -d /tmp/obrol-fault-XXXX)}; echo "working in $T"
export OBROL_ALLOW_ORG_SIGNUP=true OBROL_PASSWORD_HASH_STRENGTH=minimal
start() { .venv/bin/obrol serve --port 8600 --data-dir $T/data >> $T/server.log 2>&1 & echo $! > $T/pid; }
start
for i in $(seq 60); do curl -sf http://127.0.0.1:8600/healthz >/dev/null && break; sleep 1; done
echo "server up $(date +%T)"
.venv/bin/obrol loadtest --url http://127.0.0.1:8600 --devices 300 --duration 45 --drain-timeout 90 --report $T/rep --quiet > $T/loadtest.log 2>&1 &
LT=$!
sleep 30   # provisioning + ramp + ~10 s of traffic
PM=$(head -1 $T/data/postgres/postmaster.pid)
echo "kill -9 postmaster $PM $(date +%T)"; kill -9 $PM
for i in $(seq 30); do sleep 0.5; code=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8600/healthz); echo "healthz $code $(date +%T)"; [ "$code" = 200 ] && [ $i -gt 2 ] && break; done
sleep 8
echo "kill -9 obrol $(cat $T/pid) $(date +%T)"; kill -9 $(cat $T/pid)
sleep 1
start
for i in $(seq 60); do curl -sf http://127.0.0.1:8600/healthz >/dev/null && break; sleep 1; done
echo "server back $(date +%T)"
wait $LT; echo "loadtest exit $?"
kill -TERM $(cat $T/pid); sleep 5

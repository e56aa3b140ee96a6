#!/bin/bash
# A load test through two real faults: the embedded PostgreSQL's postmaster killed -9,
# then the obrol server itself killed -9 and started again on the same data folder.
cd "$(dirname "$0")/.."
T=${T:-$(mktemp -d /tmp/obrol-fault-XXXX)}; mkdir -p "$T"; echo "working in $T"
export OBROL_ALLOW_ORG_SIGNUP=true OBROL_PASSWORD_HASH_STRENGTH=minimal
# Push through both faults too: the APNs/FCM stand-in on 8643, the server sending to it, and
# 30% of the devices offline phones whose pushes the load test checks.
.venv/bin/python -m push.standin --port 8643 --dir $T/standin > $T/standin.json 2> $T/standin.log &
SI=$!
for i in $(seq 30); do [ -s $T/standin.json ] && break; sleep 0.5; done
field() { .venv/bin/python -c "import json,sys; print(json.load(open('$T/standin.json'))['$1'])"; }
export OBROL_APNS_KEY_FILE=$(field apns_key_file) OBROL_APNS_KEY_ID=$(field apns_key_id) \
  OBROL_APNS_TEAM_ID=$(field apns_team_id) OBROL_APNS_TOPICS="[\"$(field apns_topic)\"]" \
  OBROL_APNS_PRODUCTION_HOST=127.0.0.1 OBROL_APNS_SANDBOX_HOST=127.0.0.1 OBROL_APNS_PORT=8643 \
  OBROL_FCM_SERVICE_ACCOUNT_FILE=$(field fcm_service_account_file) \
  OBROL_FCM_BASE_URL=https://127.0.0.1:8643 OBROL_PUSH_CA_FILE=$(field ca_file) \
  OBROL_OPERATOR_TOKEN=drill-operator-token-0123456789abcdef
# One process: the push check compares the operator endpoint's counters, which are per process.
start() { .venv/bin/obrol serve --workers 1 --port 8600 --data-dir $T/data >> $T/server.log 2>&1 & echo $! > $T/pid; }
start
for i in $(seq 60); do curl -sf http://127.0.0.1:8600/healthz >/dev/null && break; sleep 1; done
echo "server up $(date +%T)"
.venv/bin/obrol loadtest --url http://127.0.0.1:8600 --devices 300 --duration 45 --drain-timeout 90 \
  --push-share 0.3 --standin-url https://127.0.0.1:8643 --standin-ca $(field ca_file) \
  --report $T/rep --quiet > $T/loadtest.log 2>&1 &
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
kill -TERM $(cat $T/pid); kill -TERM $SI; sleep 5

#!/usr/bin/env bash
# Chaos run of the compose stack, bounded in time, on loopback only. Under a
# steady load from the host (bench/chaos: cache sets and gets, lock
# acquisitions with fencing checks, task submissions), it kills a NATS
# server and starts it again, kills one instance of each service and starts
# it again, and pauses a lock instance past the lease TTL. The cache runs as
# three instances; a fourth joins, and once every cache node reports its
# hand-off of the new ring complete, one of the first three is killed for
# good. Then the load program waits for every submitted task to finish,
# reads every cache key back (every acknowledged key must be readable with
# its newest value) and prints the report: mutual exclusion, tokens, tasks, cache keys,
# and the errors and recovery of each fault. The stack is torn down
# (containers, network, volumes) whatever happens.
#
#   scripts/chaos.sh
#
# Environment: CHAOS_BUILD=0 reuses an earlier build; CHAOS_REPORT=FILE
# also writes the report there; CHAOS_TTL lease TTL in seconds (default 3);
# COMPOSE_PROJECT_NAME (default mesh-chaos). NATS client ports: the first
# free from 14401, on 127.0.0.1. It takes about 5 minutes.
set -euo pipefail

cd "$(dirname "$0")/.."
t0=$(date +%s)
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-mesh-chaos}
ttl=${CHAOS_TTL:-3}
load_s=180
settle_s=90
tmp=$(mktemp -d)

. scripts/lib.sh
find_compose chaos
# A third cache instance from the start, and a fourth (profile join) that
# joins under load: cache1's definition under other names, written out
# (docker-compose 1.x cannot extend a service that has depends_on).
{
	echo "services:"
	for n in cache3 cache4; do
		cat <<EOF
  $n:
    image: \${MESH_IMAGE:-mesh:dev}
    restart: on-failure
    depends_on:
      n1: {condition: service_healthy}
      n2: {condition: service_healthy}
      n3: {condition: service_healthy}
    command: ["serve", "cache", "--node", "$n"]
    environment:
      MESH_NATS: nats://n1:4222,nats://n2:4222,nats://n3:4222
      MESH_NKEY: /run/secrets/nkey
      MESH_LOG_LEVEL: \${MESH_LOG_LEVEL:-info}
      MESH_REPLICAS: "3"
      MESH_INBOX_PREFIX: _INBOX_cache
    volumes: ["$PWD/deploy/secrets/cache.nk:/run/secrets/nkey:ro"]
EOF
		if [ "$n" = cache4 ]; then echo '    profiles: ["join"]'; fi
	done
} >"$tmp/cache-nodes.yaml"
compose+=(-f compose.yaml -f "$tmp/cache-nodes.yaml")

up="" load_pid=""
cleanup() {
	local rc=$?
	if [ -n "$load_pid" ]; then
		kill "$load_pid" 2>/dev/null && wait "$load_pid" 2>/dev/null || true
	fi
	if [ -n "$up" ]; then
		# Anything left paused would block the teardown.
		for id in $("${compose[@]}" ps -q 2>/dev/null); do docker unpause "$id" >/dev/null 2>&1 || true; done
		"${compose[@]}" --profile join down -v --remove-orphans >/dev/null 2>&1 || true
	fi
	rm -rf "$tmp"
	echo "chaos: done in $(($(date +%s) - t0)) s (exit $rc)" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { echo "chaos: $(elapsed)s $*" >&2; }
fail() {
	echo "chaos: FAIL: $*" >&2
	exit 1
}
now_ms() { date +%s%3N; }
elapsed() {
	local ms=$(($(now_ms) - ${load_t0:-$(now_ms)}))
	printf '%3d.%d' $((ms / 1000)) $((ms % 1000 / 100))
}
mark() { echo "$(now_ms) $1 $2" >>"$tmp/faults"; }
cid() { "${compose[@]}" ps -q "$1"; }

# wait_ready ID SECONDS: until the container is healthy (or running, if it
# has no health check).
wait_ready() {
	local deadline=$(($(date +%s) + $2)) st
	while :; do
		st=$(docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$1")
		case $st in healthy) return 0 ;; running) docker inspect --format '{{if .State.Health}}x{{end}}' "$1" | grep -q x || return 0 ;; esac
		[ "$(date +%s)" -lt "$deadline" ] || fail "container $1 not ready after $2 s ($st)"
		sleep 0.5
	done
}

# cache_settled N SECONDS: until N cache nodes agree on a ring of N and each
# has completed the hand-off of that ring (rebalanced_ring = ring_version,
# nothing under-replicated).
cache_settled() {
	local deadline=$(($(date +%s) + $2)) out
	while :; do
		out=$("${compose[@]}" exec -T cache2 /mesh cache stats --json 2>/dev/null || true)
		if echo "$out" | N="$1" python3 -c '
import json, os, sys
r = json.load(sys.stdin)
n = int(os.environ["N"])
nodes = r.get("nodes") or []
ok = len(nodes) == n and all(x.get("members") == n and x.get("ring_version") == nodes[0].get("ring_version")
	and x.get("rebalanced_ring") == x.get("ring_version") and x.get("under_replicated", 1) == 0 for x in nodes)
sys.exit(0 if ok else 1)' 2>/dev/null; then
			return 0
		fi
		[ "$(date +%s)" -lt "$deadline" ] || fail "the cache did not settle on $1 nodes with its hand-off complete in $2 s"
		sleep 0.5
	done
}

# kill_restart SERVICE DOWN_SECONDS: kill -9 the service's container, leave
# it down a while, start it again and wait until it is healthy.
kill_restart() {
	local id
	id=$(cid "$1")
	mark start "kill-$1"
	say "kill $1"
	docker kill "$id" >/dev/null
	sleep "$2"
	docker start "$id" >/dev/null
	wait_ready "$id" 90
	mark end "kill-$1"
	say "$1 back and healthy"
}

if [ "${CHAOS_BUILD:-1}" != 0 ]; then
	scripts/build.sh
fi
(cd bench && go build -o "$tmp/chaos" ./chaos)

stack_ports 14401

up=1
"${compose[@]}" up -d >"$tmp/up.log" 2>&1 || { cat "$tmp/up.log" >&2; fail "compose up"; }
for s in n1 n2 n3 cache1 cache2 cache3 lock1 lock2 scheduler1 scheduler2 worker; do wait_ready "$(cid "$s")" 120; done
echo "chaos: stack healthy in $(($(date +%s) - t0)) s; load for ${load_s}s, lease TTL ${ttl}s" >&2

: >"$tmp/faults"
load_t0=$(now_ms)
"$tmp/chaos" load -nats "$urls" -password @deploy/secrets/client.password \
	-duration "${load_s}s" -settle "${settle_s}s" -lock-ttl "${ttl}s" -faults "$tmp/faults" >"$tmp/report" 2>"$tmp/load.log" &
load_pid=$!

sleep 10
kill_restart n1 10
sleep 10
kill_restart cache1 8
sleep 5
mark start join-cache4
say "cache4 joins"
"${compose[@]}" --profile join up -d cache4 >>"$tmp/up.log" 2>&1 || fail "cache4 up"
wait_ready "$(cid cache4)" 90
cache_settled 4 60
say "cache4 holds its keys; kill cache3 for good"
mark end join-cache4
mark start kill-cache3
docker kill "$(cid cache3)" >/dev/null
cache_settled 3 60
mark end kill-cache3
say "the cache settled on 3 nodes"
sleep 8
kill_restart lock1 8
sleep 8
kill_restart scheduler1 8
sleep 8
id=$(cid lock2)
mark start pause-lock2
say "pause lock2 for $((ttl + 3)) s (lease TTL ${ttl}s)"
docker pause "$id" >/dev/null
sleep $((ttl + 3))
docker unpause "$id" >/dev/null
wait_ready "$id" 60
mark end pause-lock2
say "lock2 resumed"

# The load ends by itself, then waits for the tasks: bounded.
deadline=$(($(date +%s) + load_s + settle_s + 60))
while kill -0 "$load_pid" 2>/dev/null; do
	[ "$(date +%s)" -lt "$deadline" ] || fail "the load program did not finish in time"
	sleep 1
done
rc=0
wait "$load_pid" || rc=$?
load_pid=""
cat "$tmp/report"
if [ -n "${CHAOS_REPORT:-}" ]; then cp "$tmp/report" "$CHAOS_REPORT"; fi
if [ -s "$tmp/load.log" ]; then
	echo "chaos: the load program's log (warnings and errors), last lines:" >&2
	tail -n 20 "$tmp/load.log" >&2
fi
[ "$rc" = 0 ] || fail "the load program found a failed check (exit $rc)"

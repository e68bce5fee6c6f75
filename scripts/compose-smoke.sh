#!/usr/bin/env bash
# Smoke test of the compose stack: build (scripts/build.sh), start it, wait
# for every health check, use each primitive from the host with the mesh
# CLI and with JSON requests, check the users' permissions and that
# discovery shows two instances of each service, then tear it all down
# (containers, network, volumes), whatever happened.
#
#   scripts/compose-smoke.sh
#
# Environment: SMOKE_BUILD=0 reuses the binaries and image of an earlier
# build; SMOKE_TIMEOUT (seconds to wait for health, default 120);
# COMPOSE_PROJECT_NAME (default mesh-smoke). The NATS client ports are the
# first free ones from 14301, the console's the first free one from 4280,
# on 127.0.0.1 only.
set -euo pipefail

cd "$(dirname "$0")/.."
t0=$(date +%s)
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-mesh-smoke}
health_timeout=${SMOKE_TIMEOUT:-120}
tmp=$(mktemp -d)

. scripts/lib.sh
find_compose smoke

up=""
cleanup() {
	local rc=$?
	if [ -n "$up" ]; then
		if [ "$rc" != 0 ]; then
			echo "smoke: FAILED; the stack's last logs:" >&2
			"${compose[@]}" logs --no-color --tail 15 >&2 2>&1 || true
		fi
		"${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
	fi
	rm -rf "$tmp"
	echo "smoke: $([ "$rc" = 0 ] && echo passed || echo failed) in $(($(date +%s) - t0)) s" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { echo "smoke: $*" >&2; }
fail() {
	echo "smoke: FAIL: $*" >&2
	exit 1
}

if [ "${SMOKE_BUILD:-1}" != 0 ]; then
	step "building"
	scripts/build.sh
fi
[ -f deploy/secrets/auth.conf ] || fail "no credentials in deploy/secrets (run scripts/build.sh)"
step "building the host-side checker (bench/chaos)"
(cd bench && go build -o "$tmp/chaos" ./chaos)

stack_ports 14301
MESH_CONSOLE_PORT=$(free_port 4280)
export MESH_CONSOLE_PORT

step "starting the stack (${compose[*]}, project $COMPOSE_PROJECT_NAME, NATS on 127.0.0.1:$MESH_NATS_PORT1-$MESH_NATS_PORT3)"
t_up=$(date +%s)
up=1
"${compose[@]}" up -d >"$tmp/up.log" 2>&1 || { cat "$tmp/up.log" >&2; fail "compose up"; }

# Every container with a health check healthy, the others running.
deadline=$(($(date +%s) + health_timeout))
while :; do
	ids=$("${compose[@]}" ps -q)
	total=0 ready=0
	for id in $ids; do
		total=$((total + 1))
		st=$(docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id")
		case $st in healthy | running) ready=$((ready + 1)) ;; esac
	done
	[ "$total" -ge 11 ] && [ "$ready" = "$total" ] && break
	[ "$(date +%s)" -lt "$deadline" ] || { "${compose[@]}" ps >&2; fail "not healthy after ${health_timeout}s ($ready of $total ready)"; }
	sleep 1
done
step "healthy: $total containers in $(($(date +%s) - t_up)) s"
for id in $ids; do
	# A service that starts while the cluster is still electing leaders may
	# fail to create its streams in time, exit and be restarted: say so.
	n=$(docker inspect --format '{{.RestartCount}} {{.Name}}' "$id")
	[ "${n%% *}" = 0 ] || step "  restarted before it was healthy: ${n#* } (${n%% *} times)"
done

mesh=bin/docker/rootfs/mesh
client=(--nats "$urls" --user client --inbox-prefix _INBOX_client --password "$(cat deploy/secrets/client.password)")
admin=(--nats "$urls" --user admin --password "$(cat deploy/secrets/admin.password)")
chaos=("$tmp/chaos")
cpass="@deploy/secrets/client.password"

# A healthy cache node answers before the nodes' rings hold each other
# (joins are debounced over a heartbeat interval): wait for both.
deadline=$(($(date +%s) + 30))
until [ "$("$mesh" "${client[@]}" cache stats --json 2>/dev/null | grep -c '"members": 2')" -ge 3 ]; do
	[ "$(date +%s)" -lt "$deadline" ] || fail "the cache nodes' rings did not hold both nodes in 30 s"
	sleep 0.5
done

step "cache: set, get, delete (mesh CLI)"
"$mesh" "${client[@]}" cache set smoke:greeting hello --ttl 1m >/dev/null
[ "$("$mesh" "${client[@]}" cache get smoke:greeting)" = hello ] || fail "cache get did not return the value set"
"$mesh" "${client[@]}" cache del smoke:greeting >"$tmp/out" || fail "cache del: $(cat "$tmp/out")"
grep -q '^deleted smoke:greeting$' "$tmp/out" || fail "cache del did not delete the key: $(cat "$tmp/out")"
# Gone: get exits 1 and says not found.
rc=0
"$mesh" "${client[@]}" cache get smoke:greeting >"$tmp/out" 2>"$tmp/err" || rc=$?
[ "$rc" = 1 ] && grep -q 'not_found' "$tmp/err" || fail "cache get after del: exit $rc, $(cat "$tmp/out" "$tmp/err")"

step "cache: JSON requests"
"${chaos[@]}" req -nats "$urls" -password "$cpass" mesh.cache.set '{"key":"smoke:json","value":"v1","ttl_ms":60000}' >"$tmp/out"
grep -q '"copies":2' "$tmp/out" || fail "cache set did not store 2 copies: $(cat "$tmp/out")"
"${chaos[@]}" req -nats "$urls" -password "$cpass" mesh.cache.get '{"key":"smoke:json"}' >"$tmp/out"
grep -q '"value":"v1"' "$tmp/out" || fail "cache get (JSON): $(cat "$tmp/out")"

step "lock: acquire, inspect, release (mesh CLI), a second holder refused"
"$mesh" "${client[@]}" lock acquire smoke --ttl 30s --json >"$tmp/lock"
token=$(tr -dc '0-9\n' <<<"$(grep '"token"' "$tmp/lock")")
[ -n "$token" ] || fail "no token in: $(cat "$tmp/lock")"
"$mesh" "${client[@]}" lock inspect smoke | grep -q holds || fail "inspect does not show the holder"
# The second acquire is refused because the lock is held (409 lock_held),
# not for any other reason: the CLI names the code, the reply carries 409.
rc=0
"$mesh" "${client[@]}" lock acquire smoke --ttl 30s >"$tmp/out" 2>"$tmp/err" || rc=$?
[ "$rc" = 1 ] && grep -q 'lock_held' "$tmp/err" || fail "second acquire (CLI): exit $rc, $(cat "$tmp/out" "$tmp/err")"
rc=0
"${chaos[@]}" req -nats "$urls" -password "$cpass" mesh.lock.acquire '{"name":"smoke","owner":"smoke2","ttl_ms":30000}' >"$tmp/out" 2>"$tmp/err" || rc=$?
[ "$rc" != 0 ] && grep -q 'mesh.lock.acquire: 409 ' "$tmp/err" && grep -q '"code":"lock_held"' "$tmp/out" ||
	fail "second acquire (JSON): exit $rc, want a 409 lock_held: $(cat "$tmp/out" "$tmp/err")"
"$mesh" "${client[@]}" lock release smoke "$token" >/dev/null

step "lock: JSON requests"
"${chaos[@]}" req -nats "$urls" -password "$cpass" mesh.lock.acquire '{"name":"smoke-json","owner":"smoke","ttl_ms":30000}' >"$tmp/out"
token=$(sed -n 's/.*"token":\([0-9]*\).*/\1/p' "$tmp/out")
[ -n "$token" ] || fail "lock acquire (JSON): $(cat "$tmp/out")"
"${chaos[@]}" req -nats "$urls" -password "$cpass" mesh.lock.release "{\"name\":\"smoke-json\",\"token\":$token}" >/dev/null

step "scheduler: submit and wait (mesh CLI), run by the example worker"
"$mesh" "${client[@]}" --timeout 30s task submit default echo hi --wait >"$tmp/task"
grep -q 'state *succeeded' "$tmp/task" || fail "task did not succeed: $(cat "$tmp/task")"
grep -q 'result *hi' "$tmp/task" || fail "task result: $(cat "$tmp/task")"

step "scheduler: JSON submit and status"
"${chaos[@]}" req -nats "$urls" -password "$cpass" mesh.scheduler.submit '{"queue":"default","type":"echo","payload":"json"}' >"$tmp/out"
id=$(sed -n 's/.*"id":"\([^"]*\)".*/\1/p' "$tmp/out")
[ -n "$id" ] || fail "submit (JSON): $(cat "$tmp/out")"
for _ in $(seq 50); do
	"${chaos[@]}" req -nats "$urls" -password "$cpass" mesh.scheduler.status "{\"id\":\"$id\"}" >"$tmp/out"
	grep -q '"state":"succeeded"' "$tmp/out" && break
	sleep 0.2
done
grep -q '"state":"succeeded"' "$tmp/out" || fail "task $id: $(cat "$tmp/out")"

# ms: the milliseconds since the epoch of the RFC 3339 field $1 of the JSON
# in file $2 (empty if absent).
ms() {
	local v
	v=$(sed -n "s/.*\"$1\": *\"\([^\"]*\)\".*/\1/p" "$2" | head -1)
	[ -z "$v" ] || date -u -d "$v" +%s%3N
}

step "scheduler: a delayed task, a dead letter, a cancel, a periodic schedule"
# Delayed by 2 s: run_at is 2 s after the task's creation, and the task
# started no earlier than run_at (the service's own instants, one clock).
"$mesh" "${client[@]}" --timeout 30s task submit default echo later --delay 2s --wait --json >"$tmp/task"
grep -q '"state": "succeeded"' "$tmp/task" || fail "delayed task: $(cat "$tmp/task")"
created=$(ms created_at "$tmp/task") run_at=$(ms run_at "$tmp/task") started=$(ms started_at "$tmp/task")
[ -n "$created" ] && [ -n "$run_at" ] && [ -n "$started" ] || fail "delayed task without created_at, run_at or started_at: $(cat "$tmp/task")"
[ $((run_at - created)) -ge 2000 ] || fail "delayed task: run_at only $((run_at - created)) ms after its creation, want 2000"
[ "$started" -ge "$run_at" ] || fail "delayed task started $((run_at - started)) ms before its run_at"
step "  delayed task: started $((started - run_at)) ms after its run_at"
"$mesh" "${client[@]}" --timeout 30s task submit default reject nope --wait --json >"$tmp/task"
grep -q '"state": "dead"' "$tmp/task" || fail "rejected task not dead: $(cat "$tmp/task")"
dead_id=$(sed -n 's/.*"id": *"\([^"]*\)".*/\1/p' "$tmp/task" | head -1)
"$mesh" "${client[@]}" task submit default sleep 30s --json >"$tmp/out"
id=$(sed -n 's/.*"id": *"\([^"]*\)".*/\1/p' "$tmp/out")
sleep 1
"$mesh" "${client[@]}" task cancel "$id" | grep -q cancelled || fail "cancel of $id"
# schedule_tasks: how many tasks the schedule smoke made so far. A list
# the scheduler answers unavailable (a JetStream leader moving) is asked
# again, up to 5 times.
schedule_tasks() {
	local i
	for i in 1 2 3 4 5; do
		if "$mesh" "${client[@]}" task list default --limit 1000 --json >"$tmp/list" 2>"$tmp/list.err"; then
			grep -c '"schedule": "smoke"' "$tmp/list" || true
			return
		fi
		grep -q 'unavailable' "$tmp/list.err" || break
		sleep 1
	done
	echo "smoke: FAIL: task list: $(cat "$tmp/list.err")" >&2
	echo -1
}
"$mesh" "${client[@]}" schedule add smoke --queue default --type echo --every 1s >"$tmp/out" || fail "schedule add: $(cat "$tmp/out")"
grep -q 'smoke.*every 1s' "$tmp/out" || fail "schedule add: $(cat "$tmp/out")"
"$mesh" "${client[@]}" schedule list >"$tmp/out"
grep -q '^smoke ' "$tmp/out" || fail "schedule list does not show smoke: $(cat "$tmp/out")"
# It fires: two of its tasks within 15 s.
deadline=$(($(date +%s) + 15))
until [ "$(schedule_tasks)" -ge 2 ]; do
	[ "$(date +%s)" -lt "$deadline" ] || fail "the schedule made $(schedule_tasks) tasks in 15 s, want 2"
	sleep 0.5
done
"$mesh" "${client[@]}" schedule rm smoke >"$tmp/out" || fail "schedule rm: $(cat "$tmp/out")"
grep -q 'removed.*smoke' "$tmp/out" || fail "schedule rm: $(cat "$tmp/out")"
"$mesh" "${client[@]}" schedule list >"$tmp/out"
if grep -q '^smoke ' "$tmp/out"; then fail "schedule list still shows smoke after rm: $(cat "$tmp/out")"; fi
# Removed, it fires no more: after a tick possibly in flight at the rm,
# three of its intervals pass without a new task.
sleep 1.5
before=$(schedule_tasks)
sleep 3
after=$(schedule_tasks)
[ "$before" -ge 2 ] && [ "$after" = "$before" ] || fail "the removed schedule's tasks: $before, then $after 3 s later"
step "  schedule: $after tasks, none after its removal"
"$mesh" "${client[@]}" task queues | grep -q '^default' || fail "no queue default"

step "console: the overview, a dead task's page and the locks on 127.0.0.1:$MESH_CONSOLE_PORT"
console="http://127.0.0.1:$MESH_CONSOLE_PORT"
deadline=$(($(date +%s) + 30))
# The overview lists the three services once the console's first sample
# of the micro stats is in (or its own discovery).
until curl -fsS "$console/" >"$tmp/page" 2>"$tmp/err" && grep -q '<b>scheduler</b>' "$tmp/page" && grep -q '<b>cache</b>' "$tmp/page" && grep -q '<b>lock</b>' "$tmp/page"; do
	[ "$(date +%s)" -lt "$deadline" ] || fail "the console's overview: $(cat "$tmp/err") $(head -c 2000 "$tmp/page")"
	sleep 0.5
done
grep -q 'MESH_EVENTS' "$tmp/page" || fail "the overview does not list MESH_EVENTS: $(head -c 2000 "$tmp/page")"
# The dead task's page: its state and last error (the scheduler's record of
# it); its events came before anyone opened the page, and the stack does
# not store task events (no --store-task-events): the page says so.
curl -fsS "$console/scheduler/tasks/$dead_id" >"$tmp/page" || fail "the console's task page"
grep -q 'id="task-state">dead<' "$tmp/page" && grep -q 'id="events-not-stored"' "$tmp/page" ||
	fail "the dead task's page lacks its state or the note that task events are not stored: $(head -c 3000 "$tmp/page")"
if grep -q 'could not be read' "$tmp/page"; then fail "the console could not read MESH_EVENTS: $(grep 'could not be read' "$tmp/page")"; fi
curl -fsS "$console/locks" >"$tmp/page" || fail "the console's locks page"
grep -q 'lock.released' "$tmp/page" || fail "the locks page lacks the smoke's lock events: $(head -c 3000 "$tmp/page")"
# A page asked for under another name (DNS rebinding) is refused.
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: console.example:$MESH_CONSOLE_PORT" "$console/")
[ "$code" = 403 ] || fail "the console answered a foreign Host with $code, want 403"

step "permissions: the client, cache and worker users' limits"
"${chaos[@]}" perms -nats "$urls" -password "$cpass" -cache-seed deploy/secrets/cache.nk -worker-seed deploy/secrets/worker.nk >"$tmp/perms" || { cat "$tmp/perms" >&2; fail "permission checks"; }
grep -c '^ok' "$tmp/perms" | sed 's/^/smoke:   checks passed: /' >&2

step "discovery: two instances of each service, streams and buckets with 3 replicas"
"$mesh" "${admin[@]}" status --json >"$tmp/status"
for svc in cache lock scheduler; do
	n=$(tr -d ' \n' <"$tmp/status" | grep -o "\"name\":\"$svc\",\"instances\":[0-9]*" | grep -o '[0-9]*$' || true)
	[ "$n" = 2 ] || fail "$svc: ${n:-no} instances, want 2"
done
# Every stream and bucket listed says 3 replicas: as many "replicas":3 as
# entries (a missing field fails), and the events and locks among them.
flat=$(tr -d ' \n' <"$tmp/status")
entries=$(grep -o '"kind":"[a-z]*"' <<<"$flat" | wc -l)
r3=$(grep -o '"replicas":3[,}]' <<<"$flat" | wc -l)
[ "$entries" -ge 2 ] && [ "$r3" = "$entries" ] || fail "$r3 of $entries streams and buckets with 3 replicas: $(cat "$tmp/status")"
for name in MESH_EVENTS MESH_LOCKS MESH_TASK_HISTORY; do
	grep -q "\"name\":\"$name\"" <<<"$flat" || fail "status does not list $name: $(cat "$tmp/status")"
done
# Task events are live only (no --store-task-events): MESH_EVENTS stores
# the lock and cache events, not the task events.
events=$(grep -o '"name":"MESH_EVENTS","kind":"stream","subjects":\[[^]]*\]' <<<"$flat")
grep -q 'mesh.events.lock' <<<"$events" && ! grep -q 'mesh.events.task' <<<"$events" ||
	fail "MESH_EVENTS stores ${events:-?}, want the lock and cache events only"
"$mesh" "${admin[@]}" status >&2

step "no permission violation in the servers' logs but the checks' own"
if "${compose[@]}" logs --no-color n1 n2 n3 2>&1 | grep -i 'violation' | grep -v '"[^"]*permission check [a-z]*"'; then
	fail "permission violations of the services above"
fi

#!/usr/bin/env bash
# Runs the side-by-side benchmarks of bench/ (a Go module of its own).
#
#   scripts/bench.sh                  every benchmark, one after the other
#   scripts/bench.sh transport [flags] bus echo vs raw nats echo vs Redis GET
#   scripts/bench.sh ring [flags]      consistent-hash rings (no server)
#   scripts/bench.sh lock [flags]      mesh lock service vs etcd mutex vs bare NATS KV
#   scripts/bench.sh cache [flags]     mesh cache vs Redis vs the raw NATS echo, then
#                                      the memory of 1M items (cache -memory 1000000)
#   scripts/bench.sh scheduler [flags] mesh scheduler vs asynq (Redis) vs a bare JetStream
#                                      work queue: enqueue, drain, idle latency, lateness;
#                                      with -soak DURATION, the mesh scheduler alone at a
#                                      steady rate for DURATION (no Redis)
#
# Flags after the benchmark's name go to its program (e.g. `transport
# -duration 2s -cpuprofile /tmp/cpu.prof`). The servers a benchmark needs
# (nats-server built from the module cache into bin/, redis-server and etcd
# from Debian's packages) are started here on 127.0.0.1 at free ports and
# stopped on exit. Environment: NATS_PORT (default: the first free from 14222),
# REDIS_PORT (from 16379), ETCD_PORT (client port, from 12379; the peer port
# is the next free one), BENCH_TIMEOUT (seconds per benchmark, default 900),
# NATS_SYNC (lock only: JetStream sync_interval, e.g. `always`; default: the
# server's own, fsync every 2 minutes).
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
tmp=$(mktemp -d)
nats_pid=""
redis_pid=""
etcd_pid=""
bench_pid=""
timeout_s=${BENCH_TIMEOUT:-900}

stop_servers() {
	for pid in $nats_pid $redis_pid $etcd_pid; do
		kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
	done
	nats_pid="" redis_pid="" etcd_pid=""
}
cleanup() {
	if [ -n "$bench_pid" ]; then
		kill "$bench_pid" 2>/dev/null && wait "$bench_pid" 2>/dev/null || true
	fi
	stop_servers
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

. scripts/lib.sh

# wait_port PORT PID NAME LOG: wait up to 10 s for PID to accept on PORT.
wait_port() {
	for _ in $(seq 100); do
		listening "$1" && return 0
		if ! kill -0 "$2" 2>/dev/null; then
			echo "bench: $3 exited; its log:" >&2
			cat "$4" >&2
			exit 1
		fi
		sleep 0.1
	done
	echo "bench: $3 does not accept connections on 127.0.0.1:$1" >&2
	exit 1
}

# start_nats [ARGS...]: ARGS go to nats-server (e.g. -js -sd DIR).
start_nats() {
	echo "bench: building nats-server" >&2
	go build -o bin/nats-server github.com/nats-io/nats-server/v2
	nats_port=${NATS_PORT:-$(free_port 14222)}
	bin/nats-server -a 127.0.0.1 -p "$nats_port" "$@" >"$tmp/nats.log" 2>&1 &
	nats_pid=$!
	wait_port "$nats_port" "$nats_pid" nats-server "$tmp/nats.log"
	echo "bench: $(bin/nats-server --version) on 127.0.0.1:$nats_port" >&2
}

start_redis() {
	if ! command -v redis-server >/dev/null; then
		echo "bench: installing redis-server" >&2
		apt-get update && apt-get install -y redis-server
	fi
	redis_port=${REDIS_PORT:-$(free_port 16379)}
	redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$tmp" \
		--save '' --appendonly no --daemonize no >"$tmp/redis.log" 2>&1 &
	redis_pid=$!
	wait_port "$redis_port" "$redis_pid" redis-server "$tmp/redis.log"
	echo "bench: $(redis-server --version | cut -d' ' -f1-3) on 127.0.0.1:$redis_port" >&2
}

start_etcd() {
	if ! command -v etcd >/dev/null; then
		echo "bench: installing etcd-server" >&2
		apt-get update && apt-get install -y etcd-server
	fi
	etcd_port=${ETCD_PORT:-$(free_port 12379)}
	local peer
	peer=$(free_port $((etcd_port + 1)))
	# etcd's durability defaults are kept: the WAL is fsynced on every commit.
	etcd --name bench --data-dir "$tmp/etcd" \
		--listen-client-urls "http://127.0.0.1:$etcd_port" \
		--advertise-client-urls "http://127.0.0.1:$etcd_port" \
		--listen-peer-urls "http://127.0.0.1:$peer" \
		--initial-advertise-peer-urls "http://127.0.0.1:$peer" \
		--initial-cluster "bench=http://127.0.0.1:$peer" \
		--logger zap --log-outputs stderr >"$tmp/etcd.log" 2>&1 &
	etcd_pid=$!
	wait_port "$etcd_port" "$etcd_pid" etcd "$tmp/etcd.log"
	echo "bench: $(etcd --version | head -1) on 127.0.0.1:$etcd_port (peer $peer)" >&2
}

# in_bench CMD...: run CMD in bench/, bounded in time. It runs in the
# background so that an interrupt reaches the trap at once; timeout passes
# the signal on to CMD's whole process group (go run and the program).
in_bench() {
	(cd "$root/bench" && exec timeout "$timeout_s" "$@") &
	bench_pid=$!
	local rc=0
	wait "$bench_pid" || rc=$?
	bench_pid=""
	return "$rc"
}

bench_transport() {
	start_nats
	start_redis
	in_bench go run ./transport -nats "nats://127.0.0.1:$nats_port" -redis "127.0.0.1:$redis_port" "$@"
	stop_servers
}

bench_cache() {
	# JetStream only for the events stream that the mesh ensures at start.
	start_nats -js -sd "$tmp/js"
	start_redis
	echo "bench: building mesh" >&2
	go build -o bin/mesh ./cmd/mesh
	in_bench go run ./cache -nats "nats://127.0.0.1:$nats_port" -nats-pid "$nats_pid" -redis "127.0.0.1:$redis_port" -mesh "$root/bin/mesh" "$@"
	in_bench go run ./cache -nats "nats://127.0.0.1:$nats_port" -memory 1000000
	stop_servers
}

bench_ring() {
	in_bench go run ./ring "$@"
}

bench_lock() {
	local mon
	local args=(-js -sd "$tmp/js")
	mon=$(free_port 18222)
	# JetStream file store in a temporary directory, with the server's
	# default sync (fsync every 2 minutes) unless NATS_SYNC sets it.
	if [ -n "${NATS_SYNC:-}" ]; then
		printf 'jetstream {\n  sync_interval: %s\n}\n' "$NATS_SYNC" >"$tmp/nats-sync.conf"
		args+=(-c "$tmp/nats-sync.conf")
	fi
	start_nats "${args[@]}" -m "$mon"
	start_etcd
	# The revision under test, for the table's header.
	local rev
	rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
	if git status --porcelain -- services/lock pkg/bus 2>/dev/null | grep -v '_test\.go$' | grep -q .; then
		rev="$rev with uncommitted changes to services/lock or pkg/bus"
	fi
	in_bench go run ./lock -nats "nats://127.0.0.1:$nats_port" -nats-monitor "http://127.0.0.1:$mon" -nats-pid "$nats_pid" \
		-etcd "http://127.0.0.1:$etcd_port" -etcd-pid "$etcd_pid" -source "$rev" "$@"
	stop_servers
}

# The scheduler: JetStream file store in a temporary directory with the
# server's default sync, and Redis for asynq (no persistence, as in
# start_redis); soak mode (-soak DURATION) runs the mesh alone, no Redis.
bench_scheduler() {
	start_nats -js -sd "$tmp/js"
	local soak="" redis=()
	for a in "$@"; do
		case "$a" in -soak | -soak=* | --soak | --soak=*) soak=1 ;; esac
	done
	if [ -z "$soak" ]; then
		start_redis
		redis=(-redis "127.0.0.1:$redis_port")
	fi
	local rev
	rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
	if git status --porcelain -- services/scheduler pkg/bus 2>/dev/null | grep -v '_test\.go$' | grep -q .; then
		rev="$rev with uncommitted changes to services/scheduler or pkg/bus"
	fi
	in_bench go run ./scheduler -nats "nats://127.0.0.1:$nats_port" "${redis[@]}" -nats-pid "$nats_pid" \
		-server-pids "$nats_pid${redis_pid:+,$redis_pid}" -source "$rev" "$@"
	stop_servers
}

all=(transport ring lock cache scheduler)
case "${1:-all}" in
all)
	for b in "${all[@]}"; do
		echo "bench: == $b ==" >&2
		"bench_$b"
	done
	;;
transport | ring | lock | cache | scheduler)
	b=$1
	shift
	"bench_$b" "$@"
	;;
*)
	echo "usage: $0 [all | transport | ring | lock | cache | scheduler] [flags of the benchmark]" >&2
	exit 2
	;;
esac

# Helpers shared by the scripts; source it, do not run it.

# listening PORT: something accepts connections on 127.0.0.1:PORT.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# free_port PORT: the first port from PORT on which nothing listens.
free_port() {
	local p=$1
	while listening "$p"; do p=$((p + 1)); done
	echo "$p"
}

# stack_ports PORT: exports MESH_NATS_PORT1..3, the host ports of the compose
# stack's NATS servers, free from PORT on, and sets urls to reach them.
stack_ports() {
	MESH_NATS_PORT1=$(free_port "$1")
	MESH_NATS_PORT2=$(free_port $((MESH_NATS_PORT1 + 1)))
	MESH_NATS_PORT3=$(free_port $((MESH_NATS_PORT2 + 1)))
	export MESH_NATS_PORT1 MESH_NATS_PORT2 MESH_NATS_PORT3
	urls="nats://127.0.0.1:$MESH_NATS_PORT1,nats://127.0.0.1:$MESH_NATS_PORT2,nats://127.0.0.1:$MESH_NATS_PORT3"
}

# find_compose NAME: sets the array compose to docker-compose or docker
# compose, whichever is installed, or exits saying NAME needs one.
find_compose() {
	if command -v docker-compose >/dev/null 2>&1; then
		compose=(docker-compose)
	elif docker compose version >/dev/null 2>&1; then
		compose=(docker compose)
	else
		echo "$1: neither docker-compose nor docker compose is installed" >&2
		exit 1
	fi
}

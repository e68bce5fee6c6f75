# Helpers shared by the scripts; source it, do not run it.

# listening PORT: something accepts connections on 127.0.0.1:PORT.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# free_port PORT: the first port from PORT on which nothing listens.
free_port() {
	local p=$1
	while listening "$p"; do p=$((p + 1)); done
	echo "$p"
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

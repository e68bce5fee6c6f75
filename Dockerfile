# The mesh image: static binaries only, built first by scripts/build.sh into
# bin/docker (no base image, no registry). The compose stack picks each
# container's program with its entrypoint:
#   /nats-server   the NATS server, built from the module go.mod pins
#   /mesh          mesh serve cache|lock|scheduler, and the health checks
#   /worker        the example task worker (examples/worker)
#   /healthz       the NATS containers' health check (deploy/healthz)
# Credentials and configuration are mounted at run time, never copied in.
FROM scratch
COPY bin/docker/rootfs/ /
# The JetStream store's mount point, owned by the unprivileged user so that
# a named volume mounted there starts writable.
COPY --chown=65534:65534 bin/docker/data /data
USER 65534:65534
ENTRYPOINT ["/mesh"]

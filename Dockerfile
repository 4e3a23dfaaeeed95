# A fedtrace node (or investigator) image. Build from the repository root:
#   docker build -t fedtrace .
# Run one node whose directory (node.toml, policy, DuckDB, audit trail, keys) is a volume:
#   docker run -d --name fedtrace-ee -v ee-node:/srv/fedtrace -p 7001:7001 fedtrace
# The node directory must have been made with `fedtrace node init /srv/fedtrace
# --listen 0.0.0.0:7001 ...`; docs/operations.md has the whole procedure.
FROM python:3.11-slim

ARG FEDTRACE_UID=10001
ARG FEDTRACE_GID=10001

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/fedtrace/venv \
    PATH=/opt/fedtrace/venv/bin:$PATH \
    FEDTRACE_CACHE_DIR=/tmp/fedtrace-cache

# The project's own sources only (see .dockerignore): installed into the venv, then removed.
WORKDIR /opt/fedtrace
COPY pyproject.toml README.md src/
COPY fedtrace/ src/fedtrace/
COPY node/ src/node/
COPY coordinator/ src/coordinator/
RUN python -m venv "$VIRTUAL_ENV" \
    && pip install ./src \
    && rm -rf ./src \
    && fedtrace --help > /dev/null

# Example policies, for the demo federation (deploy/compose.yaml) and as templates.
COPY policies/ /opt/fedtrace/policies/

# A dedicated user without a login shell; it owns only the node directory.
RUN groupadd --system --gid "$FEDTRACE_GID" fedtrace \
    && useradd --system --uid "$FEDTRACE_UID" --gid fedtrace --home-dir /srv/fedtrace \
       --no-create-home --shell /usr/sbin/nologin fedtrace \
    && mkdir -p /srv/fedtrace \
    && chown fedtrace:fedtrace /srv/fedtrace \
    && chmod 0700 /srv/fedtrace
USER fedtrace:fedtrace
WORKDIR /srv/fedtrace

# The node directory: DuckDB database, audit trail, TLS keys, policy. Back it up (docs/operations.md).
VOLUME ["/srv/fedtrace"]
# 7001: gRPC over mutual TLS (node.toml `listen`); 9464: Prometheus metrics (plain HTTP).
EXPOSE 7001 9464

# A node builds one epoch per dataset before it serves; on large datasets that takes minutes.
HEALTHCHECK --interval=30s --timeout=15s --start-period=300s --retries=3 \
    CMD ["fedtrace", "node", "health", "/srv/fedtrace"]

# `node serve` stops gracefully on SIGTERM (in-flight calls get 30 s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["fedtrace"]
CMD ["node", "serve", "/srv/fedtrace"]

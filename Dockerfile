# syntax=docker/dockerfile:1
# One image for every role: the command picks it (see README, "Run it anywhere").
#   conclave serve                          the orchestrator API (port 4000)
#   conclave agent serve NAME --port PORT   one agent service (ports 5001-5009)
#   conclave scheduler                      the candle-close scheduler (metrics on 9464)
#   conclave dashboard --port 3001          the dashboard
# tests/deploy/test_dockerfile.py checks this file with hadolint and runs its HEALTHCHECK
# command against a live orchestrator.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: a virtual environment with the package and its wheels ------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# a compiler only for a dependency without a wheel for this platform; never in the final stage
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install .

# ---- runtime: the environment, a non-root user, nothing else -----------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NUMBA_CACHE_DIR=/tmp/numba \
    HEALTHCHECK_URL=http://127.0.0.1:4000/health/live
RUN groupadd --system --gid 10001 conclave \
    && useradd --system --uid 10001 --gid conclave --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin conclave \
    && mkdir -p /app/data /app/logs \
    && chown conclave:conclave /app/data /app/logs
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
USER 10001:10001
# data/ holds SQLite (monolithic mode) and logs/ the service logs; /tmp holds numba's cache
# of the compiled backtest loop (NUMBA_CACHE_DIR): the only writable paths, so the root
# file system can be mounted read-only (Kubernetes: readOnlyRootFilesystem, /tmp an emptyDir)
VOLUME ["/app/data"]
EXPOSE 4000 5001-5009 3001 9464
# the live probe of whichever role runs: set HEALTHCHECK_URL to its port (compose does)
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=4)"]
CMD ["conclave", "serve"]

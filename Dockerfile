# The project image: the Bytewax flow (default command), the simulator and the trainer.
#
#   docker build -t pm-flow .
#   docker run --rm pm-flow python -m connectors.simulator --num-equipment 2 --readings 3
#
# Default command: the flow with Bytewax recovery in /recovery (mount a volume there).
# The entrypoint (infra/docker/flow-entrypoint.sh) creates the recovery partitions on first
# start and applies the SQL migrations when PM_DATABASE_URL is set; see that file.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /app

# Dependencies first, from pyproject.toml alone, so this layer is rebuilt only when the
# pinned dependencies change (every pinned package ships a manylinux wheel: no compiler).
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The project itself (`pip install .`; dependencies are already in place).
COPY README.md ./
COPY alerting ./alerting
COPY connectors ./connectors
COPY flows ./flows
COPY models ./models
COPY infra/sql ./infra/sql
RUN pip install --no-deps . && rm -rf build ./*.egg-info

COPY infra/docker/flow-entrypoint.sh /usr/local/bin/flow-entrypoint.sh

# Non-root user; /recovery and /artifacts are created here so that named volumes mounted
# on them start out owned by that user.
RUN chmod 0755 /usr/local/bin/flow-entrypoint.sh \
    && useradd --create-home --uid 10001 --user-group pm \
    && mkdir -p /recovery /artifacts \
    && chown pm:pm /recovery /artifacts
USER pm
# Run in the user's home, which it can write to (Bytewax writes dataflow.json into the working
# directory when its API server is enabled; MLflow and matplotlib write caches under $HOME);
# the code stays read-only in /app, imported from there whatever the working directory.
WORKDIR /home/pm

ENV PM_RECOVERY_PARTITIONS=4 \
    PM_SQL_DIR=/app/infra/sql \
    PYTHONPATH=/app

# /metrics, /healthz and /readyz when PM_METRICS_PORT=9100 (PM_METRICS_ADDRESS=0.0.0.0 in a container).
EXPOSE 9100

# SIGINT (KeyboardInterrupt) stops Python even as PID 1, where an unhandled SIGTERM is
# ignored and `docker stop` would wait for its timeout. A stop loses nothing: with
# recovery, the flow resumes from its last snapshot.
STOPSIGNAL SIGINT

ENTRYPOINT ["/usr/local/bin/flow-entrypoint.sh"]
CMD ["python", "-m", "bytewax.run", "flows.main", "-r", "/recovery", "-s", "30", "-b", "0"]

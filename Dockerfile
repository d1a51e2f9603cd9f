# syntax=docker/dockerfile:1
# One base for both stages; pin it by digest for a build that does not change under
# you (README.md, "Reproducible builds", says how): --build-arg PYTHON_IMAGE=python:3.11-slim@sha256:...
ARG PYTHON_IMAGE=python:3.11-slim

# Build: every dependency at the version and hash requirements.lock names (pip refuses
# anything else), then the service itself without resolving again.
FROM ${PYTHON_IMAGE} AS build
RUN python -m venv /opt/venv
WORKDIR /src
COPY requirements.lock ./
RUN /opt/venv/bin/pip install --no-cache-dir --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY service ./service
COPY migrations ./migrations
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps .

# Run: no compilers, no sources, a non-root user.
FROM ${PYTHON_IMAGE}
RUN useradd --create-home --uid 10001 app
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LOG_FORMAT=json \
    METRICS_HOST=0.0.0.0
USER app
WORKDIR /home/app
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
# SIGTERM drains in-flight requests (up to --graceful-timeout) and closes the pool.
STOPSIGNAL SIGTERM
CMD ["service", "serve", "--host", "0.0.0.0", "--port", "8000"]

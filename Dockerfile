# syntax=docker/dockerfile:1
# Build: the same install step as README.md (a virtual environment, `pip install .`).
FROM python:3.11-slim AS build
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY migrations ./migrations
RUN /opt/venv/bin/pip install --no-cache-dir .

# Run: no compilers, no sources, a non-root user.
FROM python:3.11-slim
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

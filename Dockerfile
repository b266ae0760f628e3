# One image for every adapterfleet service: `docker run IMAGE store serve ...`, `worker serve ...`, `router serve ...`.
#   docker build -t adapterfleet .                                        # CPU torch (the default index below)
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t adapterfleet:cuda .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1
WORKDIR /app

# A C++ compiler: workers build their native LoRA kernel for the CPU they run on, on first start, into
# --native-dir (kept on the /cache volume), and serve with torch's ops until it is ready.
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ \
 && rm -rf /var/lib/apt/lists/*

# torch first and pinned, from the CPU wheel index unless told otherwise: the project only asks for torch>=2.3,
# and a bare `torch` from PyPI is a multi-GB CUDA build.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0

# The project's dependencies in a layer of their own (kept while only the code changes), then the code itself.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(d for d in p['dependencies'] + sum((p['optional-dependencies'][x] for x in \
('server', 'store', 'worker', 'router')), []) if not d.startswith('adapterfleet')))" \
        > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt
COPY protos protos
COPY store store
COPY services services
RUN pip install --no-deps . && rm -rf build ./*.egg-info

# Non-root, numeric (so Kubernetes' runAsNonRoot can verify it). /models, /cache and /data belong to it, so
# named volumes mounted there start out writable.
RUN groupadd --system --gid 10001 adapterfleet \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/adapterfleet adapterfleet \
 && mkdir -p /models /cache /data /security \
 && chown adapterfleet:adapterfleet /models /cache /data /security
USER 10001:10001

# store, worker, router gRPC; Prometheus /metrics (each service's --metrics-port).
EXPOSE 50051 50061 50071 9090
ENTRYPOINT ["adapterfleet"]
CMD ["--help"]

FROM python:3.11-slim
WORKDIR /app
# torch first and pinned (CPU wheels: pass your CPU wheel index as TORCH_INDEX_URL, or leave empty for the default build)
ARG TORCH_INDEX_URL=""
RUN pip install --no-cache-dir torch==2.13.0 ${TORCH_INDEX_URL:+--index-url $TORCH_INDEX_URL}
COPY pyproject.toml README.md ./
COPY protos protos
COPY store store
COPY services services
RUN pip install --no-cache-dir .
ENTRYPOINT []

# The vllm-fleet image: vLLM plus this package, so one image serves the engine and runs
# `vllm-fleet stage / prefetch / drain` in init containers, sidecars, Jobs and preStop hooks
# (a node pulls it once for all of them).
#   docker build -t ghcr.io/OWNER/vllm-fleet:0.1.0-vllm0.32.0 .
#   then set kubernetes.image in the spec to that name (never a `latest` tag).
# Light tooling-only image (no engine): --build-arg BASE=python:3.12-slim
ARG BASE=vllm/vllm-openai:v0.32.0
FROM ${BASE}

# Extras for the stagers' sources, e.g. --build-arg EXTRAS="[s3,gcs]" (empty: core only).
ARG EXTRAS=""
ARG UID=10001

WORKDIR /opt/vllm-fleet
COPY pyproject.toml README.md ./
COPY src ./src
RUN python3 -m pip install --no-cache-dir ".${EXTRAS}" \
 && useradd --uid "${UID}" --gid 0 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin vllm-fleet \
 && vllm-fleet --help > /dev/null

# The manifests run every container with a read-only root filesystem, HOME=/tmp (an emptyDir) and
# this non-root uid; the same defaults hold for `docker run`.
ENV HOME=/tmp XDG_CACHE_HOME=/tmp/.cache VLLM_NO_USAGE_STATS=1
USER ${UID}
ENTRYPOINT []
CMD ["vllm-fleet", "--help"]

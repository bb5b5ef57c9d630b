# The sidecar image, also run as the injected init container (`lightmesh intercept install`):
# `docker build -f deploy/images/sidecar.Dockerfile -t lightmesh-proxy:0.1.0 .` (from the repository
# root). The proxy runs as UID 1337, the UID the redirect rules exempt; the init container runs
# the same image as root with NET_ADMIN/NET_RAW only (the pod spec says so, not this file).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY lightmesh lightmesh
COPY lightmeshctl lightmeshctl
COPY controlplane controlplane
COPY sidecar sidecar
RUN python -m venv /opt/lightmesh \
 && /opt/lightmesh/bin/pip install --no-cache-dir --no-compile .

FROM ${PYTHON_IMAGE}
# iptables for the init step (Debian's default nf_tables backend).
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 1337 lightmesh \
 && useradd --uid 1337 --gid 1337 --no-create-home --shell /usr/sbin/nologin lightmesh
COPY --from=build /opt/lightmesh /opt/lightmesh
ENV PATH=/opt/lightmesh/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 1337:1337
EXPOSE 15001 15006 15020
ENTRYPOINT ["lightmesh"]
CMD ["sidecar"]

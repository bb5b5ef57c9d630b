# The control plane image: `docker build -f deploy/images/controlplane.Dockerfile -t lightmesh-controlplane:0.1.0 .`
# (from the repository root). Non-root (UID 1337, as deploy/controlplane.yaml runs it), slim base,
# pinned Python; every dependency comes as a wheel, so no compiler in the image.
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
RUN groupadd --gid 1337 lightmesh \
 && useradd --uid 1337 --gid 1337 --no-create-home --shell /usr/sbin/nologin lightmesh
COPY --from=build /opt/lightmesh /opt/lightmesh
ENV PATH=/opt/lightmesh/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 1337:1337
EXPOSE 15010 15016 15017
ENTRYPOINT ["lightmesh"]
CMD ["controlplane", "--in-cluster", "--host=0.0.0.0"]

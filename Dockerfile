# One image for every role: `fedstream server`, `fedstream client`, `fedstream certs`.
# TORCH_SPEC picks the torch build: the default is the CPU release we test with; a GPU image can pass e.g.
# --build-arg TORCH_SPEC="torch>=2.2,<3" on a machine where pip resolves the CUDA wheel.
FROM python:3.11-slim

ARG TORCH_SPEC="torch==2.13.0"
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

WORKDIR /opt/fedstream
RUN pip install "${TORCH_SPEC}"
COPY pyproject.toml README.md ./
COPY protos ./protos
COPY cli ./cli
COPY common ./common
COPY server ./server
COPY client ./client
RUN pip install .

# a new named volume takes the ownership of its mount point here, so `fed` can write the runs and certificates
RUN useradd --create-home fed && mkdir -p /runs /certs /relay-certs && chown fed /runs /certs /relay-certs
USER fed
WORKDIR /home/fed
ENTRYPOINT ["fedstream"]
CMD ["--help"]

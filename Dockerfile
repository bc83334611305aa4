# One image for every role: `fedstream server`, `fedstream client`, `fedstream certs`.
# TORCH_INDEX and TORCH_SPEC pick the torch build. The default is the CPU release we test with, from PyTorch's CPU
# index (PyPI's Linux wheel is the CUDA build, with about 3 GB of CUDA libraries). A GPU image passes
# --build-arg TORCH_INDEX=https://pypi.org/simple (and TORCH_SPEC="torch>=2.2,<3" for another version).
FROM python:3.11-slim

ARG TORCH_INDEX="https://download.pytorch.org/whl/cpu"
ARG TORCH_SPEC="torch==2.13.0"
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

WORKDIR /opt/fedstream
RUN pip install --index-url "${TORCH_INDEX}" "${TORCH_SPEC}"
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

# Conveyor server image. CPU by default:
#   docker build -t conveyor .
# CUDA (a CUDA runtime base image that provides Python 3.11 as python3, and ONNX Runtime's
# GPU build, onnxruntime-gpu, in place of onnxruntime):
#   docker build -t conveyor:gpu --build-arg BASE_IMAGE=<cuda image with python3.11> \
#       --build-arg ORT_PACKAGE=onnxruntime-gpu .
# Run with a model repository mounted at /models:
#   docker run -p 8000-8002:8000-8002 -v $PWD/models:/models conveyor
ARG BASE_IMAGE=python:3.11-slim-bookworm
# The native gRPC front end builds against the base's gRPC C++ 1.51 (Debian 12). A base
# without it takes NATIVE_GRPC=0: the server then serves gRPC on grpc.aio.
ARG NATIVE_GRPC=1

FROM ${BASE_IMAGE} AS build
ARG ORT_PACKAGE=onnxruntime
ARG NATIVE_GRPC
WORKDIR /src
# One virtual environment holds the server. Its dependencies come from the lock, hash-checked:
# requirements/server.txt, or for onnxruntime-gpu requirements/gpu.txt (the gpu extra, without
# onnxruntime). The project goes in with --no-deps, so pip resolves nothing beside the lock.
COPY requirements requirements
RUN case "${ORT_PACKAGE}" in \
        onnxruntime) lock=requirements/server.txt ;; \
        onnxruntime-gpu) lock=requirements/gpu.txt ;; \
        *) echo "ORT_PACKAGE is onnxruntime or onnxruntime-gpu" >&2; exit 1 ;; \
    esac \
    && python3 -m venv /opt/conveyor \
    && /opt/conveyor/bin/pip install --no-cache-dir --require-hashes -r "${lock}"
# The native gRPC front end (native/, its messages generated from proto/), built with the
# compiler and gRPC's headers that the final stage leaves behind, and with its build tools
# from the lock (requirements/native-build.txt, hash-checked) rather than an isolated build
# that would fetch them unchecked.
COPY proto proto
COPY native native
RUN if [ "${NATIVE_GRPC}" = 1 ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends "g++=4:12.*" "cmake=3.25.*" \
            "libgrpc++-dev=1.51.*" "protobuf-compiler-grpc=1.51.*" "libprotobuf-dev=3.21.*" \
        && rm -rf /var/lib/apt/lists/* \
        && /opt/conveyor/bin/pip install --no-cache-dir --require-hashes \
            -r requirements/native-build.txt \
        && /opt/conveyor/bin/pip install --no-cache-dir --no-build-isolation ./native; \
    fi
COPY pyproject.toml README.md ./
COPY runtime runtime
COPY kernels kernels
# Then the project, and the bundled examples so that the image serves something without a volume.
RUN /opt/conveyor/bin/pip install --no-cache-dir --no-deps . \
    && /opt/conveyor/bin/python -c \
    "from pathlib import Path; from runtime.examples import build_example_repository; build_example_repository(Path('/models'))"

FROM ${BASE_IMAGE}
ARG NATIVE_GRPC
# gRPC C++'s and protobuf's shared libraries for the native front end, and the server's user.
RUN if [ "${NATIVE_GRPC}" = 1 ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends "libgrpc++1.51=1.51.*" "libprotobuf32=3.21.*" \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && useradd --no-log-init --create-home --uid 10001 conveyor
COPY --from=build /opt/conveyor /opt/conveyor
COPY --from=build --chown=10001:10001 /models /models
ENV PATH=/opt/conveyor/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    CONVEYOR_HOME=/home/conveyor \
    NUMBA_CACHE_DIR=/home/conveyor/.cache/numba
USER 10001
WORKDIR /home/conveyor
# Compile the Numba kernels into the user's cache now, so the first start does not.
RUN python3 -c "import kernels; kernels.warm_up()"
EXPOSE 8000 8001 8002
VOLUME ["/models"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2).status != 200)"]
ENTRYPOINT ["conveyor"]
CMD ["serve", "--model-repository", "/models"]

# Conveyor server image. CPU by default:
#   docker build -t conveyor .
# CUDA (a CUDA runtime base image that provides Python 3.11 as python3, and ONNX Runtime's
# GPU build):
#   docker build -t conveyor:gpu --build-arg BASE_IMAGE=<cuda image with python3.11> \
#       --build-arg ORT_PACKAGE=onnxruntime-gpu .
# Run with a model repository mounted at /models:
#   docker run -p 8000-8002:8000-8002 -v $PWD/models:/models conveyor
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG ORT_PACKAGE=onnxruntime
ARG ORT_GPU_VERSION=1.31.1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY runtime runtime
COPY kernels kernels
# One virtual environment holds the server; the GPU build swaps ONNX Runtime's package.
RUN python3 -m venv /opt/conveyor \
    && /opt/conveyor/bin/pip install --no-cache-dir . \
    && if [ "${ORT_PACKAGE}" != "onnxruntime" ]; then \
        /opt/conveyor/bin/pip uninstall --yes onnxruntime \
        && /opt/conveyor/bin/pip install --no-cache-dir "${ORT_PACKAGE}==${ORT_GPU_VERSION}" ".[gpu]"; \
    fi
# The bundled examples, so the image serves something without a volume.
RUN /opt/conveyor/bin/python -c \
    "from pathlib import Path; from runtime.examples import build_example_repository; build_example_repository(Path('/models'))"

FROM ${BASE_IMAGE}
RUN useradd --no-log-init --create-home --uid 10001 conveyor
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

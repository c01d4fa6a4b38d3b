# AlexNet training on a CUDA host:
#   docker build -t alexnet .
#   docker run --gpus all --ipc=host -v /data/imagenet:/data/imagenet:ro -v "$PWD/outputs:/app/outputs" \
#       alexnet experiment=paper_imagenet data.root=/data/imagenet
# --ipc=host gives the DataLoader workers enough shared memory.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A C compiler: torch.compile (Triton's launcher) and the native LRN kernel
# (alexnet/csrc/lrn.c) build code on first use; the runtime image has none.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# Dependencies first, so that editing the code does not reinstall them. The
# base image's torch satisfies the requirement and is kept.
COPY pyproject.toml README.md ./
COPY alexnet ./alexnet
RUN pip install .
COPY conf ./conf
COPY scripts ./scripts
COPY train.py ./

RUN useradd --create-home --uid 1000 alexnet \
    && mkdir -p /app/outputs /data \
    && chown alexnet:alexnet /app/outputs /data
USER alexnet

# Datasets are mounted under /data; run folders land in /app/outputs.
VOLUME ["/data", "/app/outputs"]
ENTRYPOINT ["python", "train.py"]

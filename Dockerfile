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
# Dependencies first, in a layer of their own that reads only pyproject.toml, so
# that editing the code (alexnet/, conf/, scripts/, train.py) does not reinstall
# them. The base image's torch satisfies the requirement and is kept. Optional
# integrations: docker build --build-arg EXTRAS=export,wandb ...
ARG EXTRAS=""
COPY pyproject.toml ./
RUN python -c "import os, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = [e for e in os.environ['EXTRAS'].split(',') if e]; \
print('\n'.join(p['dependencies'] + [r for e in extras for r in p['optional-dependencies'][e]]))" \
    > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
# Then the code: the package itself (no dependencies left to fetch), the configs and scripts.
COPY README.md ./
COPY alexnet ./alexnet
RUN pip install --no-deps .
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

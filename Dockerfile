# GPU training image for inat-keras.
# The base image's TensorFlow must equal the tensorflow pin in requirements.txt
# (tests/test_docker.py checks it), so pip keeps the image's CUDA build instead of replacing it.
FROM tensorflow/tensorflow:2.21.0-gpu

# Caches (datacheck verdicts, demo data, Keras's downloaded weights) live in the runs volume, so they
# survive the container; the rest goes to /tmp, writable whatever --user the container runs as.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    INAT_KERAS_HOME=/app/runs/.cache/inat_keras \
    KERAS_HOME=/app/runs/.cache/keras \
    MPLCONFIGDIR=/tmp/matplotlib \
    WANDB_CONFIG_DIR=/tmp/wandb-config \
    WANDB_CACHE_DIR=/tmp/wandb-cache

WORKDIR /app
COPY requirements.txt .
RUN python -m pip install --no-cache-dir -r requirements.txt \
    && groupadd --gid 1000 inat \
    && useradd --create-home --uid 1000 --gid 1000 --shell /bin/bash inat \
    && mkdir -p /app/data /app/runs \
    && chown 1000:1000 /app/data /app/runs

COPY . .

# Numeric, so the host can resolve it; run with --user "$(id -u):$(id -g)" to own your files.
USER 1000:1000
# Mount the dataset at /app/data and the run directories at /app/runs, so the commands are the
# same as outside Docker: --data data/inaturalist_12K, --out runs.
VOLUME ["/app/data", "/app/runs"]
CMD ["python", "train_scratch.py", "--help"]

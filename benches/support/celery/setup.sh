#!/usr/bin/env bash
# Installs what the Celery comparison of `cargo bench --bench jobs` needs:
# Redis from Debian's packages and Celery with its Redis client from PyPI.
set -euo pipefail
if ! command -v redis-server >/dev/null; then
    apt-get update -qq
    apt-get install -y -qq redis-server >/dev/null
fi
python3 -m pip install --quiet "celery[redis]>=5,<6"
python3 -c "import celery; print('celery', celery.__version__)"
redis-server --version

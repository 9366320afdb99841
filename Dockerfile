# syntax=docker/dockerfile:1
# The production image: the portal's runtime only (requirements.lock, hash-checked wheels), served by
# gunicorn with the project's config as an unprivileged user. Behind the TLS proxy of deploy/compose.yaml
# it speaks plain HTTP on port 8000.
#
#   docker build -t cvm-portal .
#
# The same image runs the workers: `python manage.py sync_dynamodb`, `python manage.py run_imports`.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY requirements.lock ./
# Wheels only, each checked against its locked SHA-256: nothing is compiled, so no stage needs a compiler.
# pip itself is then removed: the running image installs nothing.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --require-hashes --only-binary=:all: --no-deps -r requirements.lock \
 && /opt/venv/bin/pip check \
 && /opt/venv/bin/pip uninstall --yes --quiet pip
COPY manage.py gunicorn.conf.py ./
COPY cvm_portal ./cvm_portal
COPY provisioning ./provisioning
COPY templates ./templates
COPY scripts/ready_probe.py ./scripts/ready_probe.py
# Static files are collected into the image (WhiteNoise serves them). The settings refuse to load without
# production secrets, so this one command gets throwaway values that go nowhere.
RUN SECRET_KEY=collectstatic-only-0000000000000000000000 \
    CVM_TOKEN_HMAC_KEY=collectstatic-only-0000000000000000000000 \
    CVM_AUDIT_HMAC_KEY=collectstatic-only-0000000000000000000000 \
    ALLOWED_HOSTS=localhost \
    /opt/venv/bin/python manage.py collectstatic --noinput -v0 \
 && /opt/venv/bin/python -m compileall -q cvm_portal provisioning

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GUNICORN_BIND=0.0.0.0:8000
RUN groupadd --system --gid 10001 cvm \
 && useradd --system --uid 10001 --gid cvm --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin cvm
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /app
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=6s --start-period=30s --retries=3 CMD ["python", "scripts/ready_probe.py"]
CMD ["gunicorn", "cvm_portal.wsgi:application", "--config", "gunicorn.conf.py"]

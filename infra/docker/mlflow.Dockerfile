# MLflow tracking server for docker-compose.yml: backend store SQLite in /mlflow (a volume),
# artifacts proxied by the server (--serve-artifacts) to MinIO over S3, so clients (flow,
# trainer) need only HTTP access to the server, not S3 credentials or boto3.
# mlflow is pinned to the version in pyproject.toml (tests/test_deploy_files.py checks it);
# boto3 is what the server needs for the s3:// artifact destination.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN pip install "mlflow==3.17.2" "boto3==1.44.8" \
    && useradd --create-home --uid 10001 --user-group mlflow \
    && mkdir -p /mlflow \
    && chown mlflow:mlflow /mlflow
USER mlflow
WORKDIR /mlflow

EXPOSE 5000
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000", \
     "--backend-store-uri", "sqlite:////mlflow/mlflow.db", \
     "--serve-artifacts", "--artifacts-destination", "s3://mlflow/"]

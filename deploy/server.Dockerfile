# The split-inference server: serves the tails of the bundles mounted at /bundles.
#   docker build -f deploy/server.Dockerfile -t splitinfer-server .
#   docker run -p 50051:50051 -v $PWD/bundle:/bundles/mobilenet_v2:ro splitinfer-server /bundles/mobilenet_v2
# The runtime install has no torch: the server only runs ONNX tails.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY protos protos
COPY edge_runtime edge_runtime
COPY cloud_runtime cloud_runtime
COPY splitter splitter
COPY splitinfer splitinfer
RUN pip install --no-cache-dir .
EXPOSE 50051
# SIGTERM drains in-flight requests for the grace period before exit.
STOPSIGNAL SIGTERM
ENTRYPOINT ["splitinfer", "serve", "--host", "0.0.0.0", "--port", "50051"]

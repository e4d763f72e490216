# The split-inference server: serves the tails of the bundles given as arguments.
#   docker build -f deploy/server.Dockerfile -t splitinfer-server .
#   docker run -p 50051:50051 -p 9090:9090 -v $PWD/bundle:/bundles/mobilenet_v2:ro splitinfer-server /bundles/mobilenet_v2
# With TLS and tokens (files mounted read-only; see deploy/README.md):
#   docker run ... -v $PWD/certs:/tls:ro -v $PWD/tokens.txt:/secrets/tokens.txt:ro splitinfer-server \
#     /bundles/mobilenet_v2 --tls-cert /tls/server.pem --tls-key /tls/server.key --tokens /secrets/tokens.txt
# The runtime install has no torch: the server only runs ONNX tails.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY protos protos
COPY edge_runtime edge_runtime
COPY cloud_runtime cloud_runtime
COPY splitter splitter
COPY splitinfer splitinfer
# Nothing in the server needs root; the bundles and secrets are mounted read-only.
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --no-create-home splitinfer
USER 10001
# 50051: gRPC (SplitInference, grpc.health.v1, reflection; TLS when given a certificate).
# 50052: plaintext, grpc.health.v1 only, for probes that speak neither TLS nor tokens.
# 9090: Prometheus /metrics.
EXPOSE 50051 50052 9090
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s CMD ["python", "-c", "import grpc, sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; r = g.HealthStub(grpc.insecure_channel('127.0.0.1:50052')).Check(h.HealthCheckRequest(service='splitinfer.v1.SplitInference'), timeout=4); sys.exit(r.status != h.HealthCheckResponse.SERVING)"]
# gRPC's C core prints its own plain-text lines (a failed TLS handshake is one, at info level);
# errors only, so the JSON log stays JSON.
ENV GRPC_VERBOSITY=ERROR
# SIGTERM: health turns NOT_SERVING and in-flight requests drain for --grace-s before exit.
STOPSIGNAL SIGTERM
ENTRYPOINT ["splitinfer", "serve", "--host", "0.0.0.0", "--port", "50051", "--health-port", "50052", "--metrics-port", "9090", "--metrics-host", "0.0.0.0", "--log-format", "json"]

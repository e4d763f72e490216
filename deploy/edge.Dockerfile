# The device side on an edge board (arm64 or amd64 Linux): the head of a bundle runs here and the
# tail on a splitinfer server. Only the edge runtime's packages are copied in: protos (wire
# contract, codec), edge_runtime (head, client) and the command line, which imports the rest lazily.
# No torch, no splitter, no server code.
#   docker build -f deploy/edge.Dockerfile -t splitinfer-edge .
#   docker run -v $PWD/bundle:/bundle:ro -v $PWD/photos:/photos:ro splitinfer-edge \
#     /bundle --server server.example:50051 --tls-ca /bundle/ca.pem --input /photos/cat.jpg --fallback
# --fallback runs the bundle's tail.onnx on the board while the server cannot be reached.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY protos protos
COPY edge_runtime edge_runtime
COPY splitinfer splitinfer
# The project's base dependencies: numpy, onnxruntime, grpcio, protobuf, zstandard, typer, pillow
# (and three small pure-Python server-operations packages the board never imports).
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --no-create-home splitinfer
USER 10001
# A server that keeps requests waiting for connections (TLS handshakes, reconnections) should not
# fill the board's log with gRPC's own lines.
ENV GRPC_VERBOSITY=ERROR
ENTRYPOINT ["splitinfer", "run"]

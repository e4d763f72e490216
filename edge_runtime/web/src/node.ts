// Node: onnxruntime-node runs the head; the server is called over Connect (HTTP/1.1 or 2) or
// native gRPC (HTTP/2) with @connectrpc/connect-node; the bundle is read from its directory.

import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import * as ort from "onnxruntime-node";
import { type Bundle, loadBundle } from "./bundle.js";
import { SIGNATURE_FILE, importTrustedKeys } from "./signing.js";
import { type ClientOptions, EdgeClient } from "./client.js";
import type { OrtModule } from "./head.js";
import { initZstd } from "./zstd.js";

export * from "./index.js";

export type Protocol = "connect" | "grpc-web" | "grpc";

/** PEM contents: `ca`, the authority that signed the server's certificate (https URLs); `cert`
 * and `key`, this client's, for a server that requires one (mutual TLS). */
export interface TlsOptions {
  ca?: string | Buffer;
  cert?: string | Buffer;
  key?: string | Buffer;
}

/** The bundle in directory `dir`; with `trustKeys` (PEM public keys, as KEY.pub holds them) only
 * if its manifest.sig verifies with one of them. */
export async function loadBundleDir(dir: string, trustKeys: readonly string[] = []): Promise<Bundle> {
  const read = async (name: string) => new Uint8Array(await readFile(join(dir, name)));
  const readSignature = () =>
    read(SIGNATURE_FILE).catch((err: NodeJS.ErrnoException) => {
      if (err.code === "ENOENT") return null;
      throw err;
    });
  return loadBundle(read, { trustedKeys: await importTrustedKeys(trustKeys), readSignature });
}

/** A client for the bundle at `dir`, calling `baseUrl` (http(s)://host:port of the web port, or
 * of the native gRPC port with protocol "grpc"). */
export async function connect(dir: string, baseUrl: string, options: ClientOptions & { protocol?: Protocol; tls?: TlsOptions; trustKeys?: string[] } = {}): Promise<EdgeClient> {
  await initZstd();
  const bundle = await loadBundleDir(dir, options.trustKeys);
  const protocol = options.protocol ?? "connect";
  const nodeOptions = options.tls ?? {};
  const transport =
    protocol === "grpc" ? createGrpcTransport({ baseUrl, nodeOptions })
    : protocol === "grpc-web" ? createGrpcWebTransport({ baseUrl, httpVersion: "1.1", nodeOptions })
    : createConnectTransport({ baseUrl, httpVersion: "1.1", nodeOptions });
  return EdgeClient.create(ort as unknown as OrtModule, bundle, transport, { sessionOptions: { executionProviders: ["cpu"] }, ...options });
}

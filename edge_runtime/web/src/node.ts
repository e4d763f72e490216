// Node: onnxruntime-node runs the head; the server is called over Connect (HTTP/1.1 or 2) or
// native gRPC (HTTP/2) with @connectrpc/connect-node; the bundle is read from its directory.

import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import * as ort from "onnxruntime-node";
import { type Bundle, type BundleReader, type LoadOptions, BundleError, loadBundle } from "./bundle.js";
import { type MultiCutBundle, bestChoice, cutBundle, loadMultiCutBundle } from "./multicut.js";
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
export async function loadBundleDir(dir: string, trustKeys: readonly string[] = [], withTail = false): Promise<Bundle> {
  const [read, options] = await dirReader(dir, trustKeys);
  return loadBundle(read, { ...options, withTail });
}

/** The multi-cut bundle in directory `dir` (multicut.ts), verified as loadBundleDir verifies. */
export async function loadMultiCutBundleDir(dir: string, trustKeys: readonly string[] = []): Promise<MultiCutBundle> {
  return loadMultiCutBundle(...(await dirReader(dir, trustKeys)));
}

export async function isMultiCutDir(dir: string): Promise<boolean> {
  return JSON.parse(await readFile(join(dir, "manifest.json"), "utf8")).kind === "multi-cut";
}

async function dirReader(dir: string, trustKeys: readonly string[]): Promise<[BundleReader, LoadOptions]> {
  const read = async (name: string) => new Uint8Array(await readFile(join(dir, name)));
  const readSignature = () =>
    read(SIGNATURE_FILE).catch((err: NodeJS.ErrnoException) => {
      if (err.code === "ENOENT") return null;
      throw err;
    });
  return [read, { trustedKeys: await importTrustedKeys(trustKeys), readSignature }];
}

/** Which cut of a multi-cut bundle to run: `cut` by name, or the one its decision table predicts
 * fastest at `network` (and its codec, unless `codec` is given). */
export interface CutChoice {
  cut?: string;
  network?: { bandwidthBps: number; rttMs: number; downlinkBps?: number };
}

/** A client for the bundle at `dir`, calling `baseUrl` (http(s)://host:port of the web port, or
 * of the native gRPC port with protocol "grpc"). */
export async function connect(dir: string, baseUrl: string, options: ClientOptions & CutChoice & { protocol?: Protocol; tls?: TlsOptions; trustKeys?: string[] } = {}): Promise<EdgeClient> {
  await initZstd();
  let bundle: Bundle;
  if (await isMultiCutDir(dir)) {
    const multi = await loadMultiCutBundleDir(dir, options.trustKeys);
    const chosen = options.network ? bestChoice(multi, options.network.bandwidthBps, options.network.rttMs, options.network.downlinkBps) : null;
    const cut = options.cut ?? chosen?.cut;
    if (cut === undefined) throw new BundleError(`${dir} is a multi-cut bundle: choose its cut (cut: one of ${multi.cuts.map((c) => c.manifest.cutName).join(", ")}) or give the network to choose by its decision table`);
    bundle = cutBundle(multi, cut);
    if (chosen !== null && chosen.cut === cut) options = { codec: chosen.codec, ...options };
  } else {
    bundle = await loadBundleDir(dir, options.trustKeys, options.fallback ?? false);
  }
  const protocol = options.protocol ?? "connect";
  const nodeOptions = options.tls ?? {};
  const transport =
    protocol === "grpc" ? createGrpcTransport({ baseUrl, nodeOptions })
    : protocol === "grpc-web" ? createGrpcWebTransport({ baseUrl, httpVersion: "1.1", nodeOptions })
    : createConnectTransport({ baseUrl, httpVersion: "1.1", nodeOptions });
  return EdgeClient.create(ort as unknown as OrtModule, bundle, transport, { sessionOptions: { executionProviders: ["cpu"] }, ...options });
}

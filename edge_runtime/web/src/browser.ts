// Browsers: onnxruntime-web (WebAssembly) runs the head; the server is called over gRPC-Web or
// Connect with @connectrpc/connect-web; the bundle is fetched from the server's web port.

import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-web";
// The WASM build with its JavaScript glue bundled in: only the .wasm is fetched, from wasmPaths.
import * as ort from "onnxruntime-web/wasm";
import { type Bundle, type BundleReader, type LoadOptions, loadBundle } from "./bundle.js";
import { type MultiCutBundle, loadMultiCutBundle } from "./multicut.js";
import { SIGNATURE_FILE, importTrustedKeys } from "./signing.js";
import { type ClientOptions, EdgeClient } from "./client.js";
import type { OrtModule } from "./head.js";
import { initZstd } from "./zstd.js";

export * from "./index.js";
export { ort };

export interface BrowserOptions extends ClientOptions {
  protocol?: "grpc-web" | "connect";
  /** Where the page serves the SDK's wasm files (onnxruntime-web's and zstd.wasm). */
  wasmBase?: string;
}

/** The bundle `bundleHash` as the web port serves it (GET /bundles/<hash>/<file>); with
 * `trustKeys` (PEM public keys, as KEY.pub holds them) only if its manifest.sig verifies with one. */
export async function fetchBundle(baseUrl: string, bundleHash: string, token?: string, trustKeys: readonly string[] = []): Promise<Bundle> {
  return loadBundle(...(await webReader(baseUrl, bundleHash, token, trustKeys)));
}

/** The multi-cut bundle one of whose cuts the web port serves as `bundleHash` (its manifest and
 * every head segment), verified as fetchBundle verifies; run a cut of it with cutBundle. */
export async function fetchMultiCutBundle(baseUrl: string, bundleHash: string, token?: string, trustKeys: readonly string[] = []): Promise<MultiCutBundle> {
  return loadMultiCutBundle(...(await webReader(baseUrl, bundleHash, token, trustKeys)));
}

async function webReader(baseUrl: string, bundleHash: string, token: string | undefined, trustKeys: readonly string[]): Promise<[BundleReader, LoadOptions]> {
  const headers: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {};
  const get = (name: string) => fetch(`${baseUrl}/bundles/${bundleHash}/${name}`, { headers });
  const read = async (name: string) => {
    const response = await get(name);
    if (!response.ok) throw new Error(`GET ${name} of bundle ${bundleHash}: HTTP ${response.status}`);
    return new Uint8Array(await response.arrayBuffer());
  };
  const readSignature = async () => {
    const response = await get(SIGNATURE_FILE);
    if (response.status === 404) return null;
    if (!response.ok) throw new Error(`GET ${SIGNATURE_FILE} of bundle ${bundleHash}: HTTP ${response.status}`);
    return new Uint8Array(await response.arrayBuffer());
  };
  return [read, { trustedKeys: await importTrustedKeys(trustKeys), readSignature }];
}

export async function connect(baseUrl: string, bundle: Bundle, options: BrowserOptions = {}): Promise<EdgeClient> {
  const wasmBase = options.wasmBase ?? new URL("./", import.meta.url).href;
  // Only the binary: the glue is bundled in (a prefix here would make it fetch that too).
  ort.env.wasm.wasmPaths = { wasm: `${wasmBase}ort-wasm-simd-threaded.wasm` };
  // One thread: cross-origin isolation (needed for wasm threads) is the hosting page's choice.
  ort.env.wasm.numThreads = 1;
  await initZstd(`${wasmBase}zstd.wasm`);
  const transport = options.protocol === "connect" ? createConnectTransport({ baseUrl }) : createGrpcWebTransport({ baseUrl });
  return EdgeClient.create(ort as unknown as OrtModule, bundle, transport, { sessionOptions: { executionProviders: ["wasm"] }, ...options });
}

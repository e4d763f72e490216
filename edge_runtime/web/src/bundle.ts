// A bundle as the device reads it: manifest.json, and the head file whose sha256 the manifest
// records, checked with WebCrypto (browsers and Node alike) before it is run.

import { type Preprocess, parsePreprocess } from "./preprocess.js";

export interface TensorSpec {
  name: string;
  dtype: string;
  shape: number[];
}

export interface Manifest {
  modelId: string;
  bundleHash: string;
  cutName: string;
  inputs: TensorSpec[];
  cut: TensorSpec[];
  outputs: TensorSpec[];
  codec: string;
  headFile: string;
  headSha256: string;
  tailFile: string;
  tailSha256: string;
  preprocess: Preprocess | null;
  labels: string[] | null;
}

export interface Bundle {
  manifest: Manifest;
  /** The head's ONNX bytes; null when the cut sends the raw input. */
  head: Uint8Array | null;
}

/** Reads one file of the bundle: a URL fetch in a browser, a file read in Node. */
export type BundleReader = (name: string) => Promise<Uint8Array>;

export class BundleError extends Error {}

export async function sha256Hex(data: Uint8Array): Promise<string> {
  if (globalThis.crypto?.subtle === undefined) {
    // Browsers give WebCrypto only to secure contexts: https, or a page on localhost.
    throw new BundleError("WebCrypto is not available here (a page over plain http from another host): serve the page over https to check the bundle");
  }
  const digest = await globalThis.crypto.subtle.digest("SHA-256", data as Uint8Array<ArrayBuffer>);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

function specs(data: unknown, key: string): TensorSpec[] {
  if (!Array.isArray(data)) throw new BundleError(`malformed manifest: ${key} is not a list`);
  return data.map((t) => ({ name: String(t.name), dtype: String(t.dtype), shape: (t.shape as unknown[]).map(Number) }));
}

export function parseManifest(data: Record<string, unknown>): Manifest {
  if (data.kind === "multi-cut") throw new BundleError("multi-cut bundles are not supported by this SDK; export a single cut");
  for (const key of ["model_id", "bundle_hash", "cut_name", "codec", "head_sha256", "tail_sha256"]) {
    if (typeof data[key] !== "string") throw new BundleError(`malformed manifest: ${key} is missing`);
  }
  return {
    modelId: data.model_id as string,
    bundleHash: data.bundle_hash as string,
    cutName: data.cut_name as string,
    inputs: specs(data.inputs, "inputs"),
    cut: specs(data.cut, "cut"),
    outputs: specs(data.outputs, "outputs"),
    codec: data.codec as string,
    headFile: String(data.head_file ?? "head.onnx"),
    headSha256: data.head_sha256 as string,
    tailFile: String(data.tail_file ?? "tail.onnx"),
    tailSha256: data.tail_sha256 as string,
    preprocess: data.preprocess ? parsePreprocess(data.preprocess as Record<string, unknown>) : null,
    labels: Array.isArray(data.labels) ? data.labels.map(String) : null,
  };
}

/** Verifies `data` is the file `name` whose digest the manifest records. */
export async function verifyFile(name: string, data: Uint8Array, expected: string): Promise<void> {
  const got = await sha256Hex(data);
  if (got !== expected) throw new BundleError(`bundle file ${name}: sha256 ${got} does not match the manifest's ${expected}`);
}

/** The manifest and the verified head of a bundle. */
export async function loadBundle(read: BundleReader): Promise<Bundle> {
  const text = new TextDecoder().decode(await read("manifest.json"));
  let data: Record<string, unknown>;
  try {
    data = JSON.parse(text);
  } catch (err) {
    throw new BundleError(`manifest.json is not JSON: ${(err as Error).message}`);
  }
  const manifest = parseManifest(data);
  if (!manifest.headSha256) return { manifest, head: null };
  if (manifest.headFile !== "head.onnx" && manifest.headFile !== "head.ort") throw new BundleError(`head_file ${manifest.headFile} is not supported`);
  const head = await read(manifest.headFile);
  await verifyFile(manifest.headFile, head, manifest.headSha256);
  return { manifest, head };
}

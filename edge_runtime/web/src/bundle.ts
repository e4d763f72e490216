// A bundle as the device reads it: manifest.json, verified as docs/contract.md §1 says before
// anything of it is used (its signature, when trusted keys are given; its bundle_hash, recomputed;
// the head file's sha256, checked with WebCrypto in browsers and Node alike), and the head.

import { sha256Hex } from "./digest.js";
import { BundleError } from "./errors.js";
import { type Preprocess, FIXED_STEPS, parsePreprocess } from "./preprocess.js";
import { type PyValue, dumpsPythonJson } from "./python-json.js";
import { SIGNATURE_FILE, type TrustedKey, verifyManifestSignature } from "./signing.js";

export { BundleError, BundleSignatureError } from "./errors.js";
export { sha256Hex } from "./digest.js";

export interface TensorSpec {
  name: string;
  dtype: string;
  shape: number[];
  /** The range every reader of a cut tensor in the tail clamps it to (null for an open side), which
   * the sender clamps it to before a lossy or compressed encoding (docs/contract.md §1); absent: none. */
  clamp?: [number | null, number | null];
}

export interface Manifest {
  formatVersion: number;
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
  batchable: boolean;
  labels: string[] | null;
  /** The form a server returns outputs in to a request that asks for none ("": raw fp32). */
  result: string;
  /** Which release of the model's bundle this is (0: unversioned). */
  version: number;
}

export interface Bundle {
  manifest: Manifest;
  /** The head's ONNX bytes; null when the cut sends the raw input or its head is `segments`. */
  head: Uint8Array | null;
  /** A cut of a multi-cut bundle (multicut.ts: cutBundle): the head segments it runs, in order. */
  segments?: readonly { inputs: string[]; outputs: string[]; model: Uint8Array }[];
  /** The tail's ONNX bytes, verified, when loaded with `withTail` (a device that answers requests
   * itself while the server is away: ClientOptions.fallback). */
  tail?: Uint8Array | null;
}

/** Reads one file of the bundle: a URL fetch in a browser, a file read in Node; throws for a file
 * it cannot read. */
export type BundleReader = (name: string) => Promise<Uint8Array>;

export interface LoadOptions {
  /** Also read and verify the tail file (for ClientOptions.fallback). */
  withTail?: boolean;
  /** Accept only a bundle whose manifest.sig verifies with one of these keys
   * (signing.ts: importTrustedKey); none given, signatures are not checked. */
  trustedKeys?: readonly TrustedKey[];
  /** How to read manifest.sig (null when the bundle has none); by default `read`, a failure of
   * which counts as no signature. */
  readSignature?: () => Promise<Uint8Array | null>;
}

function specs(data: unknown, key: string): TensorSpec[] {
  if (!Array.isArray(data)) throw new BundleError(`malformed manifest: ${key} is not a list`);
  return data.map((t, i) => {
    const shape = Array.isArray(t?.shape) ? t.shape.map(Number) : [];
    if (typeof t?.name !== "string" || typeof t?.dtype !== "string" || !Array.isArray(t?.shape) || !shape.every(Number.isSafeInteger)) {
      throw new BundleError(`malformed manifest: ${key}[${i}] is not {"name": string, "dtype": string, "shape": [int]}`);
    }
    if (t.clamp === undefined || t.clamp === null) return { name: t.name, dtype: t.dtype, shape };
    const bound = (b: unknown): number | null => (b === null ? null : Number(b));
    const clamp = Array.isArray(t.clamp) && t.clamp.length === 2 ? [bound(t.clamp[0]), bound(t.clamp[1])] : null;
    const finite = clamp !== null && clamp.every((b) => b === null || Number.isFinite(b));
    if (clamp === null || !finite || (clamp[0] === null && clamp[1] === null) || (clamp[0] !== null && clamp[1] !== null && clamp[0] > clamp[1])) {
      throw new BundleError(`malformed manifest: ${key}[${i}] clamp is not [low, high] with finite bounds (null for none on one side), low <= high`);
    }
    return { name: t.name, dtype: t.dtype, shape, clamp: clamp as [number | null, number | null] };
  });
}

function optional<T>(data: Record<string, unknown>, key: string, type: string, fallback: T): T {
  const value = data[key] ?? fallback;
  if (typeof value !== type) throw new BundleError(`malformed manifest: ${key} is not a ${type}`);
  return value as T;
}

/** The fields of a manifest.json (as JSON.parse or parsePythonJson reads it), checked for type;
 * its bundle_hash is not checked here (verifyBundleHash). */
export function parseManifest(data: Record<string, unknown>): Manifest {
  if (data.kind === "multi-cut") throw new BundleError("manifest.json is a multi-cut bundle's: load it with loadMultiCutBundle (node: loadMultiCutBundleDir)");
  for (const key of ["model_id", "bundle_hash", "cut_name", "codec", "head_sha256", "tail_sha256"]) {
    if (typeof data[key] !== "string") throw new BundleError(`malformed manifest: ${key} is missing`);
  }
  const formatVersion = Number(data.format_version ?? 0);
  if (formatVersion !== 1 && formatVersion !== 2) throw new BundleError(`manifest format_version ${formatVersion} is not supported (expected 1 or 2)`);
  const labels = data.labels ?? null;
  if (labels !== null && !(Array.isArray(labels) && labels.every((l) => typeof l === "string"))) throw new BundleError("malformed manifest: labels is not a list of strings");
  let preprocess: Preprocess | null = null;
  try {
    // As protos.bundle reads it: an empty record is none.
    preprocess = data.preprocess && Object.keys(data.preprocess).length ? parsePreprocess(data.preprocess as Record<string, unknown>) : null;
  } catch (err) {
    throw new BundleError(`malformed manifest: ${(err as Error).message}`);
  }
  if (preprocess !== null && !(Number.isSafeInteger(preprocess.size) && Number.isSafeInteger(preprocess.resize))) {
    throw new BundleError(`malformed manifest: preprocess size ${preprocess.size} and resize ${preprocess.resize} must be integers`);
  }
  return {
    formatVersion,
    modelId: data.model_id as string,
    bundleHash: data.bundle_hash as string,
    cutName: data.cut_name as string,
    inputs: specs(data.inputs, "inputs"),
    cut: specs(data.cut, "cut"),
    outputs: specs(data.outputs, "outputs"),
    codec: data.codec as string,
    headFile: optional(data, "head_file", "string", "head.onnx"),
    headSha256: data.head_sha256 as string,
    tailFile: optional(data, "tail_file", "string", "tail.onnx"),
    tailSha256: data.tail_sha256 as string,
    preprocess,
    batchable: optional(data, "batchable", "boolean", false),
    labels: labels as string[] | null,
    result: optional(data, "result", "string", ""),
    version: manifestVersion(data.version),
  };
}

function manifestVersion(value: unknown): number {
  // As protos.bundle reads it: a JSON integer ≥ 0 (parsePythonJson gives a bigint), absent: 0.
  if (value === undefined) return 0;
  const version = typeof value === "bigint" ? Number(value) : value;
  if (typeof version !== "number" || !Number.isSafeInteger(version) || version < 0 || (typeof value === "number" && !Number.isInteger(value))) {
    throw new BundleError(`manifest version ${String(value)} is not an integer ≥ 0`);
  }
  return version;
}

// A clamp's bounds are floats to Python (TensorSpec.from_dict), so they are written as floats here.
const pySpecs = (specs: TensorSpec[]): PyValue =>
  specs.map((s) => [s.name, s.dtype, s.shape.map(BigInt), ...(s.clamp ? [[s.clamp[0], s.clamp[1]]] : [])]);

/** The JSON text whose SHA-256 is a format-2 bundle_hash (protos.bundle's bundle_hash_text): the
 * fields that change an answer, as Python's json.dumps(covered, sort_keys=True) writes them (ints
 * as ints, the preprocessing's mean and std as floats). */
export function bundleHashText(m: Manifest): string {
  const pre = m.preprocess;
  const covered: Record<string, PyValue> = {
    format_version: BigInt(m.formatVersion),
    model_id: m.modelId,
    cut_name: m.cutName,
    head_file: m.headFile,
    head_sha256: m.headSha256,
    tail_file: m.tailFile,
    tail_sha256: m.tailSha256,
    inputs: pySpecs(m.inputs),
    cut: pySpecs(m.cut),
    outputs: pySpecs(m.outputs),
    preprocess: pre === null ? null : { size: BigInt(pre.size), resize: BigInt(pre.resize), mean: [...pre.mean], std: [...pre.std], ...FIXED_STEPS },
    batchable: m.batchable,
    labels: m.labels,
  };
  // Only when set: the hashes of bundles from before the field existed do not move.
  if (m.result) covered.result = m.result;
  if (m.version) covered.version = BigInt(m.version);
  return dumpsPythonJson(covered);
}

/** The bundle_hash `m`'s fields give: format 2's over bundleHashText; format 1's (bundles
 * exported before format 2) over the model, the files and the cut, and the labels when present. */
export function computeBundleHash(m: Manifest): Promise<string> {
  const format1: PyValue[] = [m.modelId, m.headSha256, m.tailSha256, pySpecs(m.cut)];
  if (m.labels !== null) format1.push(m.labels);
  const text = m.formatVersion === 1 ? dumpsPythonJson(format1) : bundleHashText(m);
  return sha256Hex(new TextEncoder().encode(text));
}

/** Refuses a manifest whose bundle_hash is not what its fields give: one edited after export. */
export async function verifyBundleHash(m: Manifest): Promise<void> {
  const computed = await computeBundleHash(m);
  if (computed !== m.bundleHash) {
    throw new BundleError(`manifest bundle_hash ${JSON.stringify(m.bundleHash)} does not match its contents (${computed}): the manifest was edited after export`);
  }
}

/** Verifies `data` is the file `name` whose digest the manifest records. */
export async function verifyFile(name: string, data: Uint8Array, expected: string): Promise<void> {
  const got = await sha256Hex(data);
  if (got !== expected) throw new BundleError(`bundle file ${name}: sha256 ${got} does not match the manifest's ${expected}`);
}

/** The manifest and the verified head of a bundle: with `trustedKeys`, its signature first
 * (before anything it names is read), then its bundle_hash, then the head's sha256. */
export async function loadBundle(read: BundleReader, options: LoadOptions = {}): Promise<Bundle> {
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(await read("manifest.json"));
  } catch (err) {
    throw new BundleError(`manifest.json is not UTF-8 text: ${(err as Error).message}`);
  }
  if (options.trustedKeys?.length) {
    const readSignature = options.readSignature ?? (() => read(SIGNATURE_FILE).catch(() => null));
    const signature = await readSignature();
    await verifyManifestSignature(text, signature === null ? null : new TextDecoder().decode(signature), options.trustedKeys);
  }
  let data: Record<string, unknown>;
  try {
    data = JSON.parse(text);
  } catch (err) {
    throw new BundleError(`manifest.json is not JSON: ${(err as Error).message}`);
  }
  const manifest = parseManifest(data);
  await verifyBundleHash(manifest);
  let tail: Uint8Array | null = null;
  if (options.withTail) {
    if (!manifest.tailSha256) throw new BundleError("the bundle has no tail (its cut runs everything on the device): there is nothing to fall back to");
    // As protos.bundle: a file of the bundle's own directory, never a path out of it.
    if (!/^[A-Za-z0-9._-]+$/.test(manifest.tailFile) || manifest.tailFile.startsWith(".")) throw new BundleError(`tail_file ${JSON.stringify(manifest.tailFile)} is not a file name inside the bundle`);
    tail = await read(manifest.tailFile);
    await verifyFile(manifest.tailFile, tail, manifest.tailSha256);
  }
  if (!manifest.headSha256) return { manifest, head: null, tail };
  if (manifest.headFile !== "head.onnx" && manifest.headFile !== "head.ort") throw new BundleError(`head_file ${manifest.headFile} is not supported`);
  const head = await read(manifest.headFile);
  await verifyFile(manifest.headFile, head, manifest.headSha256);
  return { manifest, head, tail };
}

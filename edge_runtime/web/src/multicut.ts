// A multi-cut bundle (protos/bundle.py's MultiCutManifest, docs/contract.md §1): several cuts of one
// model, the head stored once as segments (segment k computes the k-th cut's tensors from the
// cut before it), one ordinary manifest per cut, and the decision table the device chooses a cut
// and codec from. Loaded and verified as Python loads it: the signature first with trusted keys,
// the bundle's own hash, each cut's bundle_hash and head (its segments' digests), each segment's
// sha256. A device runs one cut at a time: `cutBundle` gives it as a Bundle for EdgeClient.

import { type Bundle, BundleError, type BundleReader, type LoadOptions, type Manifest, parseManifest, verifyBundleHash } from "./bundle.js";
import { sha256Hex } from "./digest.js";
import { type PyValue, dumpsPythonJson, parsePythonJson } from "./python-json.js";
import { SIGNATURE_FILE, verifyManifestSignature } from "./signing.js";

export interface HeadSegment {
  file: string;
  sha256: string;
  inputs: string[];
  outputs: string[];
  /** The segment's ONNX bytes, checked against sha256. */
  model: Uint8Array;
}

/** One (cut, codec) of the decision table (protos/decisions.py's Choice). */
export interface Choice {
  cut: string;
  codec: string;
  headMs: number;
  encodeMs: number;
  nbytes: number;
  decodeMs: number;
  tailMs: number;
  edgeOnly: boolean;
  resultNbytes: number;
}

export interface MultiCutBundle {
  modelId: string;
  bundleHash: string;
  segments: HeadSegment[];
  /** Per cut its manifest and how many of the segments its head runs. */
  cuts: { manifest: Manifest; segments: number }[];
  choices: Choice[];
}

const SEGMENT_FILE = /^head-[0-9]+\.onnx$/;
const MULTI_CUT_FORMAT_VERSION = 1;
const DECISIONS_VERSION = 1;

type PyObject = { [key: string]: PyValue };
const isObject = (v: PyValue | undefined): v is PyObject => typeof v === "object" && v !== null && !Array.isArray(v);
const strings = (v: PyValue | undefined, what: string): string[] => {
  if (!Array.isArray(v) || !v.every((s) => typeof s === "string")) throw new BundleError(`malformed multi-cut manifest: ${what} is not a list of strings`);
  return v as string[];
};

/** The head_sha256 of a cut whose head is `segments` run in order ("" for none). */
export function segmentsSha256(segments: readonly { sha256: string }[]): Promise<string> {
  if (segments.length === 0) return Promise.resolve("");
  return sha256Hex(new TextEncoder().encode(dumpsPythonJson(segments.map((s) => s.sha256))));
}

function parseChoices(decisions: PyObject, cuts: string[]): Choice[] {
  if (Object.keys(decisions).length === 0) throw new BundleError("the multi-cut bundle has no decision table");
  if (decisions.version !== BigInt(DECISIONS_VERSION)) throw new BundleError(`decision table version ${String(decisions.version)} is not supported (expected ${DECISIONS_VERSION})`);
  const entries = decisions.entries;
  if (!Array.isArray(entries) || entries.length === 0) throw new BundleError("the decision table has no entries");
  return entries.map((e, i) => {
    if (!isObject(e) || typeof e.cut !== "string" || typeof e.codec !== "string") throw new BundleError(`malformed decision table: entry ${i}`);
    const num = (key: string, fallback?: number) => {
      const v = e[key] ?? fallback;
      const n = typeof v === "bigint" ? Number(v) : v;
      if (typeof n !== "number" || !Number.isFinite(n) || n < 0) throw new BundleError(`decision table entry ${i} (${e.cut}, ${e.codec}): ${key} must be a finite number ≥ 0`);
      return n;
    };
    if (!cuts.includes(e.cut)) throw new BundleError(`the decision table names cut ${e.cut}, which the bundle does not carry (${cuts.join(", ")})`);
    return {
      cut: e.cut,
      codec: e.codec,
      headMs: num("head_ms"),
      encodeMs: num("encode_ms"),
      nbytes: num("nbytes"),
      decodeMs: num("decode_ms"),
      tailMs: num("tail_ms"),
      edgeOnly: e.edge_only === true,
      resultNbytes: num("result_nbytes", 0),
    };
  });
}

/** A choice's predicted latency at an uplink of `bandwidthBps` (the downlink as fast unless
 * given), an idle server: protos/decisions.py's latency_ms, the formula every side predicts with. */
export function predictedMs(choice: Choice, bandwidthBps: number, rttMs: number, downlinkBps = bandwidthBps): number {
  if (choice.edgeOnly) return choice.headMs;
  return choice.headMs + choice.encodeMs + (choice.nbytes * 8e3) / bandwidthBps + rttMs + choice.decodeMs + choice.tailMs + (choice.resultNbytes * 8e3) / downlinkBps;
}

/** The (cut, codec) the table predicts fastest among those that call a server (this SDK runs no
 * model on the device past the head: an all-on-device choice is not taken). */
export function bestChoice(bundle: MultiCutBundle, bandwidthBps: number, rttMs: number, downlinkBps?: number): Choice {
  const offloading = bundle.choices.filter((c) => !c.edgeOnly);
  if (offloading.length === 0) throw new BundleError("the decision table offers no cut that calls a server");
  return offloading.reduce((best, c) => (predictedMs(c, bandwidthBps, rttMs, downlinkBps) < predictedMs(best, bandwidthBps, rttMs, downlinkBps) ? c : best));
}

/** Reads and verifies a multi-cut bundle (see the file's comment). */
export async function loadMultiCutBundle(read: BundleReader, options: LoadOptions = {}): Promise<MultiCutBundle> {
  const text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(await read("manifest.json"));
  if (options.trustedKeys?.length) {
    const signature = await (options.readSignature ?? (() => read(SIGNATURE_FILE).catch(() => null)))();
    await verifyManifestSignature(text, signature === null ? null : new TextDecoder().decode(signature), options.trustedKeys);
  }
  let data: PyValue;
  try {
    data = parsePythonJson(text);
  } catch (err) {
    throw new BundleError(`manifest.json is not JSON: ${(err as Error).message}`);
  }
  if (!isObject(data) || data.kind !== "multi-cut") throw new BundleError("manifest.json is not a multi-cut manifest (kind \"multi-cut\"): load it with loadBundle");
  if (data.format_version !== BigInt(MULTI_CUT_FORMAT_VERSION)) throw new BundleError(`multi-cut manifest format_version ${String(data.format_version)} is not supported (expected ${MULTI_CUT_FORMAT_VERSION})`);
  if (typeof data.model_id !== "string" || !Array.isArray(data.segments) || !Array.isArray(data.cuts) || data.cuts.length === 0) {
    throw new BundleError("malformed multi-cut manifest: needs model_id, segments and cuts");
  }
  const modelId = data.model_id;
  const described = data.segments.map((s, i) => {
    if (!isObject(s) || typeof s.file !== "string" || !SEGMENT_FILE.test(s.file) || typeof s.sha256 !== "string") throw new BundleError(`malformed multi-cut manifest: segment ${i} needs a file head-N.onnx and its sha256`);
    return { file: s.file, sha256: s.sha256, inputs: strings(s.inputs, `segment ${s.file} inputs`), outputs: strings(s.outputs, `segment ${s.file} outputs`) };
  });
  const cuts: { manifest: Manifest; segments: number }[] = [];
  for (const [i, c] of data.cuts.entries()) {
    if (!isObject(c) || !isObject(c.manifest) || typeof c.segments !== "bigint") throw new BundleError(`malformed multi-cut manifest: cut ${i} needs its manifest and segment count`);
    const manifest = parseManifest(c.manifest as Record<string, unknown>);
    await verifyBundleHash(manifest);
    const count = Number(c.segments);
    if (manifest.modelId !== modelId) throw new BundleError(`multi-cut manifest of ${modelId}: cut ${manifest.cutName} is of model ${manifest.modelId}`);
    if (!(count >= 0 && count <= described.length)) throw new BundleError(`multi-cut manifest: cut ${manifest.cutName} runs ${count} of ${described.length} head segments`);
    if (manifest.headSha256 !== (await segmentsSha256(described.slice(0, count)))) throw new BundleError(`multi-cut manifest: cut ${manifest.cutName} names a head that is not its ${count} segments`);
    cuts.push({ manifest, segments: count });
  }
  const names = cuts.map((c) => c.manifest.cutName);
  if (new Set(names).size !== names.length) throw new BundleError(`multi-cut manifest: a cut is listed twice in ${names.join(", ")}`);
  const decisions: PyObject = isObject(data.decisions) ? data.decisions : Object.create(null);
  // protos.bundle's MultiCutManifest.bundle_hash: the model, the segments, each cut's hash, the table.
  const covered: PyValue = [modelId, described, cuts.map((c) => c.manifest.bundleHash), decisions];
  const computed = await sha256Hex(new TextEncoder().encode(dumpsPythonJson(covered)));
  if (computed !== data.bundle_hash) {
    throw new BundleError(`multi-cut manifest bundle_hash ${JSON.stringify(data.bundle_hash)} does not match its contents (${computed}): the manifest was edited after export`);
  }
  const choices = parseChoices(decisions, names);
  const segments: HeadSegment[] = [];
  for (const s of described) {
    const model = await read(s.file);
    const got = await sha256Hex(model);
    if (got !== s.sha256) throw new BundleError(`bundle file ${s.file}: sha256 ${got} does not match the manifest's ${s.sha256}`);
    segments.push({ ...s, model });
  }
  return { modelId, bundleHash: computed, segments, cuts, choices };
}

/** Cut `cutName` of `bundle`, as a Bundle EdgeClient runs: its manifest and its head's segments. */
export function cutBundle(bundle: MultiCutBundle, cutName: string): Bundle {
  const cut = bundle.cuts.find((c) => c.manifest.cutName === cutName);
  if (cut === undefined) throw new BundleError(`multi-cut bundle ${bundle.modelId} has no cut ${JSON.stringify(cutName)}; it has ${bundle.cuts.map((c) => c.manifest.cutName).join(", ")}`);
  if (!cut.manifest.tailSha256) throw new BundleError(`cut ${cutName} of multi-cut bundle ${bundle.modelId} runs the whole model on the device, which this SDK does not (it runs heads only); choose a cut with a tail`);
  return { manifest: cut.manifest, head: null, segments: bundle.segments.slice(0, cut.segments) };
}

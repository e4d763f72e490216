// The measurement behind bench/web_heads.py, the same in Chromium (heads-page.ts, onnxruntime-web's
// WebAssembly build) and in Node (heads-node.ts, onnxruntime-node): the head's run on one input
// after warm-up, and the SDK's encode of the head's output under each codec, each run timed with
// performance.now(). Times are returned, not summarised: the bench computes every statistic once.

import { ENCODINGS, encodeTensor, parseCodec } from "../src/codec.js";
import type { OrtModule } from "../src/head.js";

export interface HeadsJob {
  /** The head's ONNX bytes, its input (float32, dims) and the cut tensor to encode (float32, dims). */
  model: Uint8Array;
  input: Float32Array;
  inputDims: number[];
  cut: Float32Array;
  cutDims: number[];
  runs: number;
  warmup: number;
  /** Encodes timed together per run, the time divided among them: a browser's clock ticks in
   * 0.1 ms outside cross-origin isolation, about one encode's time. */
  encodeBatch: number;
  sessionOptions: Record<string, unknown>;
}

export interface HeadsTimes {
  headMs: number[];
  /** The head's output on the input, for the bench to compare with Python's. */
  headOutput: number[];
  encodeMs: Record<string, number[]>;
  encodedBytes: Record<string, number>;
}

export const CODECS = ENCODINGS.flatMap((e) => [e, `${e}+zstd`]);

export async function measureHeads(ort: OrtModule, job: HeadsJob): Promise<HeadsTimes> {
  const session = await ort.InferenceSession.create(job.model, job.sessionOptions);
  const [inputName] = session.inputNames;
  const [outputName] = session.outputNames;
  const feeds = { [inputName]: new ort.Tensor("float32", job.input, job.inputDims) };
  const headMs: number[] = [];
  let headOutput: number[] = [];
  for (let i = 0; i < job.warmup + job.runs; i++) {
    const start = performance.now();
    const outputs = await session.run(feeds);
    const ms = performance.now() - start;
    if (i >= job.warmup) headMs.push(ms);
    if (i === 0) headOutput = Array.from(outputs[outputName].data as Float32Array);
  }
  const encodeMs: Record<string, number[]> = {};
  const encodedBytes: Record<string, number> = {};
  for (const name of CODECS) {
    const codec = parseCodec(name);
    encodeMs[name] = [];
    for (let i = 0; i < job.warmup + job.runs; i++) {
      const start = performance.now();
      for (let k = 0; k < job.encodeBatch; k++) encodedBytes[name] = encodeTensor("cut", job.cut, job.cutDims, codec).data.length;
      const ms = (performance.now() - start) / job.encodeBatch;
      if (i >= job.warmup) encodeMs[name].push(ms);
    }
  }
  return { headMs, headOutput, encodeMs, encodedBytes };
}

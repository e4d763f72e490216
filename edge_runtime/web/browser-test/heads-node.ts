// bench/web_heads.py's Node side: `node dist/browser-test/heads-node.mjs JOB_DIR`, where JOB_DIR
// holds head.onnx, input.f32, cut.f32 and job.json ({inputDims, cutDims, runs, warmup}); prints
// the times (heads.ts) as one JSON line. onnxruntime-node on one intra-op and one inter-op thread.

import { readFileSync } from "node:fs";
import { join } from "node:path";
import * as ort from "onnxruntime-node";
import type { OrtModule } from "../src/head.js";
import { initZstd } from "../src/zstd.js";
import { measureHeads } from "./heads.js";

const dir = process.argv[2];
const f32 = (name: string) => {
  const bytes = readFileSync(join(dir, name));
  return new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
};
const job = JSON.parse(readFileSync(join(dir, "job.json"), "utf8"));
await initZstd();
const times = await measureHeads(ort as unknown as OrtModule, {
  ...job,
  model: new Uint8Array(readFileSync(join(dir, "head.onnx"))),
  input: f32("input.f32"),
  cut: f32("cut.f32"),
  sessionOptions: { executionProviders: ["cpu"], intraOpNumThreads: 1, interOpNumThreads: 1, executionMode: "sequential" },
});
process.stdout.write(JSON.stringify({ ...times, runtime: `onnxruntime-node ${ort.env.versions.node}`, node: process.version }) + "\n");

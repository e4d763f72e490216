// bench/web_heads.py's browser side, opened as heads.html beside the job's files (head.onnx,
// input.f32, cut.f32, job.json: heads-node.ts's) and the wasm files: onnxruntime-web's WebAssembly
// build on one thread (no cross-origin isolation, so no wasm threads either way). Writes the
// times (heads.ts) into #result.

import * as ort from "onnxruntime-web/wasm";
import type { OrtModule } from "../src/head.js";
import { initZstd } from "../src/zstd.js";
import { measureHeads } from "./heads.js";

const bytes = async (name: string) => {
  const response = await fetch(name);
  if (!response.ok) throw new Error(`GET ${name}: HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
};

async function main() {
  const base = new URL("./", location.href).href;
  ort.env.wasm.wasmPaths = { wasm: `${base}ort-wasm-simd-threaded.wasm` };
  ort.env.wasm.numThreads = 1;
  await initZstd(`${base}zstd.wasm`);
  const job = JSON.parse(new TextDecoder().decode(await bytes("job.json")));
  const f32 = async (name: string) => new Float32Array((await bytes(name)).slice().buffer);
  const times = await measureHeads(ort as unknown as OrtModule, {
    ...job,
    model: await bytes("head.onnx"),
    input: await f32("input.f32"),
    cut: await f32("cut.f32"),
    sessionOptions: { executionProviders: ["wasm"], executionMode: "sequential" },
  });
  return { ...times, runtime: `onnxruntime-web ${ort.env.versions.web} (wasm, ${ort.env.wasm.numThreads} thread)`, browser: navigator.userAgent };
}

main().then(
  (result) => (document.getElementById("result")!.textContent = JSON.stringify(result)),
  (err) => (document.getElementById("result")!.textContent = JSON.stringify({ error: String(err) })),
);

// The demo page: pick a photo; the head runs here, the server answers over gRPC-Web; the page
// shows the bytes sent, the time of each stage, the server's answer, and whether it matches the
// whole model run here (the bundle's head and tail in this browser). The result also lands in
// #result as JSON, with the sha256 of the input tensor sent, for the browser test
// (tests/web/test_demo_browser.py).

import { create } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { type EdgeClient, type EdgeResult, connect, fetchBundle, ort, preprocessImage, sha256Hex, verifyFile, wire } from "../src/browser.js";

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const base = location.origin;

interface Ranked {
  index: number;
  label: string;
  probability: number;
}

function topClasses(logits: Float32Array, labels: string[] | null, k: number): Ranked[] {
  const max = Math.max(...logits);
  const exp = Array.from(logits, (v) => Math.exp(v - max));
  const sum = exp.reduce((a, b) => a + b, 0);
  return exp
    .map((e, index) => ({ index, label: labels?.[index] ?? `class ${index}`, probability: e / sum }))
    .sort((a, b) => b.probability - a.probability)
    .slice(0, k);
}

async function decodePhoto(file: File) {
  // No colour management: the pixels are the file's, as Pillow reads them.
  const bitmap = await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const context = canvas.getContext("2d")!;
  context.drawImage(bitmap, 0, 0);
  const { data } = context.getImageData(0, 0, bitmap.width, bitmap.height);
  return { width: bitmap.width, height: bitmap.height, channels: 4, data };
}

function row(cells: (string | number)[], msColumn = -1): HTMLTableRowElement {
  const tr = document.createElement("tr");
  cells.forEach((cell, i) => {
    const td = document.createElement("td");
    td.textContent = String(cell);
    if (i === msColumn) td.className = "ms";
    tr.append(td);
  });
  return tr;
}

async function main() {
  const models = await createClient(wire.SplitInference, createGrpcWebTransport({ baseUrl: base })).listModels(create(wire.ListModelsRequestSchema));
  const wanted = new URLSearchParams(location.search).get("bundle");
  const served = models.bundles.find((b) => wanted === null || b.bundleHash === wanted);
  if (!served) throw new Error(wanted ? `the server does not serve bundle ${wanted}` : "the server serves no bundle");
  const bundle = await fetchBundle(base, served.bundleHash);
  const manifest = bundle.manifest;
  // gRPC-Web unless the address asks for Connect (?protocol=connect): the SDK speaks both.
  const protocol = new URLSearchParams(location.search).get("protocol") === "connect" ? "connect" : "grpc-web";
  const client: EdgeClient = await connect(base, bundle, { protocol, wasmBase: new URL("./", location.href).href });
  const tailBytes = new Uint8Array(await (await fetch(`${base}/bundles/${served.bundleHash}/${manifest.tailFile}`)).arrayBuffer());
  await verifyFile(manifest.tailFile, tailBytes, manifest.tailSha256);
  const tail = await ort.InferenceSession.create(tailBytes, { executionProviders: ["wasm"] });
  $("model").textContent = `model ${manifest.modelId}, cut at ${manifest.cutName}, codec ${manifest.codec}, over ${protocol}`;
  const input = $<HTMLInputElement>("photo");
  input.disabled = false;
  input.addEventListener("change", async () => {
    const file = input.files?.[0];
    if (!file) return;
    $("status").textContent = "running…";
    $("result").textContent = "";
    try {
      $<HTMLImageElement>("preview").src = URL.createObjectURL(file);
      // Preprocessed here rather than by inferImage, so the page can show which tensor it sent.
      const pixels = await decodePhoto(file);
      const start = performance.now();
      if (manifest.preprocess === null) throw new Error("this bundle takes tensors, not photos");
      const input = preprocessImage(manifest.preprocess, pixels);
      const result = await client.infer(input.data, input.dims, performance.now() - start, start);
      const inputSha256 = await sha256Hex(new Uint8Array(input.data.buffer));
      const localStart = performance.now();
      const feeds = Object.fromEntries(result.cut.map((t) => [t.name, new ort.Tensor("float32", t.data, t.shape)]));
      const local = await tail.run(feeds);
      const localMs = performance.now() - localStart;
      show(file.name, result, local[manifest.outputs[0].name].data as Float32Array, localMs, inputSha256);
    } catch (err) {
      $("status").textContent = `failed: ${(err as Error).message}`;
      $("result").textContent = JSON.stringify({ photo: file.name, error: (err as Error).message });
    }
  });

  function show(photo: string, result: EdgeResult, localLogits: Float32Array, localTailMs: number, inputSha256: string) {
    const output = result.outputs[manifest.outputs[0].name].data as Float32Array;
    const server = topClasses(output, manifest.labels, 5);
    const local = topClasses(localLogits, manifest.labels, 5);
    const matches = server[0].index === local[0].index;
    const classes = $("classes");
    classes.replaceChildren(...server.map((s, i) => row([i + 1, `${s.label} ${s.probability.toFixed(3)}`, `${local[i].label} ${local[i].probability.toFixed(3)}`])));
    $("verdict").textContent = matches ? "The server's top class matches this browser's own run." : "The server's top class differs from this browser's own run.";
    $("verdict").className = matches ? "match" : "mismatch";
    $("bytes").textContent = `${result.bytesSent} bytes of activations sent (${result.requestBytes} bytes of request, ${result.responseBytes} of reply), ${result.attempts} call(s)`;
    const t = result.timing;
    const stages: [string, number][] = [
      ["preprocess", t.preprocessMs], ["head", t.headMs], ["encode", t.encodeMs], ["network", t.networkMs],
      ["server decode", t.decodeMs], ["server queue", t.queueMs], ["server tail", t.tailMs], ["server output encode", t.outputEncodeMs],
      ["output decode", t.outputDecodeMs], ["other", t.otherMs], ["total", t.totalMs], ["(local tail, for the check)", localTailMs],
    ];
    $("stages").replaceChildren(...stages.map(([name, ms]) => row([name, ms.toFixed(2)], 1)));
    $("answer").hidden = false;
    $("status").textContent = `done: ${photo}`;
    $("result").textContent = JSON.stringify({ photo, server, local, matches, bytesSent: result.bytesSent, timing: t, inputSha256, protocol });
  }
}

main().catch((err) => {
  $("model").textContent = `cannot start: ${(err as Error).message}`;
  $("result").textContent = JSON.stringify({ error: (err as Error).message });
});

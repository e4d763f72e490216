// The SDK against the contract's conformance vectors (conformance/vectors, docs/contract.md §8):
// every preprocessing case to the bit, every codec case's encoded payload, fields and decoded
// values, the pipeline vector through the head and a server, and every request vector sent over
// gRPC-Web to `splitinfer serve --web-port` answering with the vector's status and outputs.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { after, before, describe, it } from "node:test";
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-node";
import * as ort from "onnxruntime-node";
import { Head, type OrtModule } from "../head.js";
import { connect, decodeTensor, encodeTensor, initZstd, loadBundleDir, parseCodec, parsePreprocess, preprocessImage, resizeBilinear } from "../node.js";
import { Compression, DType, Encoding, InferRequestSchema, SplitInference, TensorSchema } from "../gen/splitinfer/v1/inference_pb.js";
import { zstdDecompress } from "../zstd.js";
import { ROOT, maxAbsDiff } from "./fixture.js";

const VECTORS = process.env.SPLITINFER_CONFORMANCE ?? join(ROOT, "conformance", "vectors");
const load = (name: string) => JSON.parse(readFileSync(join(VECTORS, name), "utf8"));

interface ArrayRecord {
  dtype: string;
  shape: number[];
  base64: string;
}
function bytes(b64: string): Uint8Array {
  return new Uint8Array(Buffer.from(b64, "base64"));
}
function array(record: ArrayRecord): Float32Array | BigInt64Array | Uint8Array {
  const raw = bytes(record.base64);
  const buffer = raw.slice().buffer;
  if (record.dtype === "float32") return new Float32Array(buffer);
  if (record.dtype === "int64") return new BigInt64Array(buffer);
  if (record.dtype === "uint8") return raw;
  throw new Error(`no reader for ${record.dtype}`);
}
const sameBits = (a: ArrayLike<number | bigint>, b: ArrayLike<number | bigint>) =>
  a.length === b.length && Array.from(a).every((v, i) => Object.is(v, b[i]) || (Number.isNaN(v) && Number.isNaN(b[i])));

// `splitinfer serve` on the vectors' bundle, as a user starts it: its log names the web port.
let web = "";
let stopServer = () => {};
before(async () => {
  await initZstd();
  const python = process.env.SPLITINFER_PYTHON ?? join(ROOT, ".venv/bin/python");
  const server = spawn(python, ["-m", "splitinfer", "serve", join(VECTORS, "bundle"), "--port", "0", "--web-port", "0"], {
    cwd: ROOT,
    env: { ...process.env, PYTHONPATH: ROOT },
    stdio: ["ignore", "ignore", "pipe"],
  });
  stopServer = () => server.kill("SIGTERM");
  web = await new Promise((resolve, reject) => {
    server.once("exit", (code) => reject(new Error(`splitinfer serve exited ${code}`)));
    createInterface({ input: server.stderr! }).on("line", (line) => {
      const found = /gRPC-Web and Connect on (http:\/\/[^/]+)\//.exec(line);
      if (found) resolve(found[1]);
    });
  });
});
after(() => stopServer());

// Code.InvalidArgument → "INVALID_ARGUMENT", as the vectors name statuses.
const statusName = (code: Code) => Code[code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();

describe("conformance vectors", () => {
  it("preprocessing: every image and preset, resized and as tensors, to the bit", () => {
    const { images } = load("preprocess.json");
    let cases = 0;
    for (const image of images) {
      const rgb = array(image.rgb) as Uint8Array;
      const [height, width] = image.rgb.shape;
      for (const c of image.cases) {
        const pre = parsePreprocess(c.preprocess);
        const [newW, newH] = c.resized_size;
        assert.ok(Buffer.from(resizeBilinear(rgb, width, height, newW, newH)).equals(Buffer.from(array(c.resized) as Uint8Array)), `${image.name} ${c.preset} resize`);
        const got = preprocessImage(pre, { width, height, channels: 3, data: rgb });
        assert.ok(sameBits(got.data, array(c.tensor) as Float32Array), `${image.name} ${c.preset} tensor`);
        cases++;
      }
    }
    assert.ok(cases >= 5);
  });

  it("codecs: every float32 case encodes to the reference payload and fields, or is refused as the reference refuses it", () => {
    const { cases } = load("codecs.json");
    let checked = 0;
    for (const c of cases.filter((k: { input: ArrayRecord }) => k.input.dtype === "float32")) {
      const values = array(c.input) as Float32Array;
      const codec = parseCodec(c.codec);
      const where = `${c.array} ${c.codec}`;
      if (c.sender_error !== undefined) {
        assert.throws(() => encodeTensor(c.array, values, c.input.shape, codec), where);
        continue;
      }
      const tensor = encodeTensor(c.array, values, c.input.shape, codec);
      const payload = tensor.compression === Compression.ZSTD ? zstdDecompress(tensor.data, bytes(c.payload).length) : tensor.data;
      assert.ok(Buffer.from(payload).equals(Buffer.from(bytes(c.payload))), `${where}: payload`);
      const f = c.fields;
      assert.equal(Encoding[tensor.encoding], f.encoding.replace("ENCODING_", ""), where);
      assert.equal(Compression[tensor.compression], f.compression.replace("COMPRESSION_", ""), where);
      assert.equal(DType[tensor.dtype], f.dtype, where);
      assert.equal(Math.fround(tensor.scale), f.scale, `${where}: scale`);
      assert.equal(tensor.zeroPoint, f.zero_point, `${where}: zero_point`);
      assert.equal(tensor.channelAxis, f.channel_axis, `${where}: channel_axis`);
      assert.deepEqual(tensor.channelScales.map(Math.fround), f.channel_scales, `${where}: channel_scales`);
      assert.deepEqual(tensor.channelZeroPoints, f.channel_zero_points, `${where}: channel_zero_points`);
      checked++;
    }
    assert.ok(checked >= 40, `${checked} cases`);
  });

  it("codecs: the reference sender's tensors decode to the reference values exactly, int64 ones too", () => {
    const { cases } = load("codecs.json");
    let checked = 0;
    for (const c of cases.filter((k: { sender_error?: string }) => k.sender_error === undefined)) {
      const decoded = decodeTensor(fromBinary(TensorSchema, bytes(c.tensor)));
      assert.deepEqual(decoded.shape, c.decoded.shape, c.array);
      assert.ok(sameBits(decoded.data as ArrayLike<number | bigint>, array(c.decoded) as ArrayLike<number | bigint>), `${c.array} ${c.codec}`);
      checked++;
    }
    assert.ok(checked >= 50, `${checked} cases`);
  });

  it("pipeline: the vector's input through the bundle's head gives its activation, and the server its outputs", async () => {
    const { pipeline, output_atol: atol } = load("requests.json");
    const bundle = await loadBundleDir(join(VECTORS, "bundle"));
    const head = await Head.load(ort as unknown as OrtModule, bundle.manifest, bundle.head);
    const input = array(pipeline.input) as Float32Array;
    const [cut] = await head.run(input, pipeline.input.shape);
    assert.ok(maxAbsDiff(cut.data, array(pipeline.act) as Float32Array) <= atol);
    const client = await connect(join(VECTORS, "bundle"), web, { protocol: "grpc-web", codec: "fp32" });
    const result = await client.infer(input, pipeline.input.shape);
    for (const [name, expected] of Object.entries(pipeline.outputs as Record<string, ArrayRecord>)) {
      assert.ok(maxAbsDiff(result.outputs[name].data as Float32Array, array(expected) as Float32Array) <= atol, name);
    }
  });

  it("requests: each is answered over gRPC-Web with the vector's status, and its outputs decode to the vector's", async () => {
    const { requests, output_atol: atol } = load("requests.json");
    const rpc = createClient(SplitInference, createGrpcWebTransport({ baseUrl: web, httpVersion: "1.1" }));
    for (const vector of requests) {
      const raw = bytes(vector.request);
      let status: string;
      let outputs: Record<string, ReturnType<typeof decodeTensor>> = {};
      try {
        // Re-serialised by the SDK's own messages, unknown fields kept.
        const request = fromBinary(InferRequestSchema, raw);
        assert.ok(Buffer.from(toBinary(InferRequestSchema, request)).equals(Buffer.from(raw)) || vector.name.startsWith("unknown-field"), vector.name);
        try {
          const response = await rpc.infer(request);
          status = "OK";
          outputs = Object.fromEntries(response.outputs.map((t) => [t.name, decodeTensor(t)]));
        } catch (err) {
          status = statusName(ConnectError.from(err).code);
        }
      } catch (err) {
        if (err instanceof assert.AssertionError) throw err;
        // Bytes that are not a message: the SDK cannot build them, so they go as Connect's plain POST.
        const reply = await fetch(`${web}/splitinfer.v1.SplitInference/Infer`, { method: "POST", headers: { "content-type": "application/proto" }, body: Buffer.from(raw) });
        status = reply.ok ? "OK" : String((await reply.json()).code).toUpperCase();
      }
      assert.equal(status, vector.status, vector.name);
      for (const [name, expected] of Object.entries((vector.outputs ?? {}) as Record<string, ArrayRecord>)) {
        const got = outputs[name];
        assert.ok(got, `${vector.name}: output ${name}`);
        assert.deepEqual(got.shape, expected.shape, `${vector.name}: ${name} shape`);
        if (expected.dtype === "int64") assert.deepEqual(Array.from(got.data as BigInt64Array), Array.from(array(expected) as BigInt64Array), vector.name);
        else assert.ok(maxAbsDiff(got.data as Float32Array, array(expected) as Float32Array) <= (vector.output_atol ?? atol), `${vector.name}: ${name}`);
      }
    }
    assert.ok(requests.length >= 50);
  });
});

describe("a cut tensor's clamp (docs/contract.md §1)", () => {
  before(async () => { await initZstd(); });
  it("clamps before a lossy or compressed encoding, and leaves raw fp32 as it is", () => {
    const values = Float32Array.from({ length: 64 }, (_, i) => (i - 32) / 2);
    for (const name of ["int8+zstd", "int8ch+zstd", "fp16", "fp32+zstd"]) {
      const decoded = decodeTensor(encodeTensor("t", values, [1, 64], parseCodec(name), [0, 6])).data as Float32Array;
      assert.ok(decoded.every((v) => v >= 0 && v <= 6 + 1e-6), name);
      // Within the range, int8 keeps half a step of [0, 6].
      values.forEach((v, i) => { if (v >= 0 && v <= 6) assert.ok(Math.abs(decoded[i] - v) <= 6 / 255 / 2 + 1e-6, name); });
    }
    const raw = decodeTensor(encodeTensor("t", values, [1, 64], parseCodec("fp32"), [0, 6])).data as Float32Array;
    assert.deepEqual(Array.from(raw), Array.from(values));
    const relu = decodeTensor(encodeTensor("t", values, [1, 64], parseCodec("fp16"), [0, null])).data as Float32Array;
    assert.equal(Math.min(...relu), 0);
    assert.equal(Math.max(...relu), 15.5);
  });
});

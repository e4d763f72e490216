// The SDK in Node against a real Python server: preprocessing, encodings and the served answers
// all equal to what Python makes of the same inputs.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import * as ort from "onnxruntime-node";
import { create } from "@bufbuild/protobuf";
import { Compression, DType, Encoding, TensorSchema } from "../gen/splitinfer/v1/inference_pb.js";
import { EdgeClient, RETRY_AFTER_KEY, connect, retryWaitMs, decodeTensor, encodeTensor, initZstd, loadBundleDir, parseCodec, parsePreprocess, parseResultForm, preprocessImage, resizeBilinear } from "../node.js";
import type { OrtModule } from "../head.js";
import { type Fixture, f32, maxAbsDiff, startFixture } from "./fixture.js";

let fx: Fixture;
before(async () => {
  fx = await startFixture();
  await initZstd();
});
after(() => fx?.stop());

describe("preprocessing", () => {
  it("makes the tensor protos.preprocess makes, bit for bit, for every test image", () => {
    const pre = parsePreprocess(fx.preprocess);
    for (const image of fx.images) {
      const data = new Uint8Array(readFileSync(join(fx.work, image.file)));
      const got = preprocessImage(pre, { width: image.width, height: image.height, channels: image.channels, data });
      const expected = f32(join(fx.work, image.tensor));
      assert.deepEqual(got.dims, [1, 3, pre.size, pre.size]);
      assert.equal(maxAbsDiff(got.data, expected), 0, `${image.width}x${image.height}x${image.channels}`);
    }
  });

  it("resizes as Pillow does on random sizes, shrinking and enlarging, in Pillow's pass order", () => {
    for (const r of fx.resizes) {
      const image = new Uint8Array(readFileSync(join(fx.work, `resize-${r.n}.rgb`)));
      const got = resizeBilinear(image, r.width, r.height, r.new_width, r.new_height);
      const expected = new Uint8Array(readFileSync(join(fx.work, `resized-${r.n}.rgb`)));
      assert.ok(Buffer.from(got).equals(Buffer.from(expected)), `${r.width}x${r.height} -> ${r.new_width}x${r.new_height}`);
    }
  });

  it("refuses a manifest asking for another resize filter", () => {
    assert.throws(() => parsePreprocess({ ...fx.preprocess, resize_filter: "nearest" }), /resize_filter/);
  });
});

describe("codecs", () => {
  it("encode the head's output to the bytes Python's encoder makes", () => {
    const cut = f32(join(fx.work, "cut.f32"));
    for (const codec of fx.codecs.filter((c) => !c.includes("+"))) {
      const tensor = encodeTensor("act", cut, [1, 4, 8, 8], parseCodec(codec));
      const expected = new Uint8Array(readFileSync(join(fx.work, `encoded-${codec}.bin`)));
      assert.deepEqual(Buffer.from(tensor.data), Buffer.from(expected), codec);
    }
  });

  it("decode a zstd frame that does not declare its size, beyond a MiB, and refuse one that inflates past its shape", () => {
    const frame = new Uint8Array(readFileSync(join(fx.work, "big-unsized.zst")));
    const expected = f32(join(fx.work, "big.f32"));
    const tensor = create(TensorSchema, { name: "big", dtype: DType.DTYPE_FLOAT32, shape: [BigInt(expected.length)], encoding: Encoding.RAW, compression: Compression.ZSTD, data: frame });
    assert.equal(maxAbsDiff(decodeTensor(tensor).data as Float32Array, expected), 0);
    tensor.shape = [BigInt(expected.length - 1)];
    assert.throws(() => decodeTensor(tensor), /inflates beyond|payload is/);
  });

  it("refuse values fp16 cannot carry and non-finite values for int8", () => {
    assert.throws(() => encodeTensor("t", new Float32Array([70000]), [1], parseCodec("fp16")), /65504/);
    assert.throws(() => encodeTensor("t", new Float32Array([NaN]), [1], parseCodec("int8")), /non-finite/);
    assert.throws(() => parseCodec("bf16"), /unknown encoding/);
  });
});

describe("the served answer", () => {
  for (const protocol of ["connect", "grpc-web"] as const) {
    it(`over ${protocol} equals Python's EdgeClient's under every codec`, async () => {
      const input = f32(join(fx.work, "input.f32"));
      for (const codec of fx.codecs) {
        const client = await connect(fx.bundle, fx.web, { protocol, codec });
        const result = await client.infer(input, [1, 3, 8, 8]);
        const expected = f32(join(fx.work, `expected-${codec.replace("+", "-")}.f32`));
        assert.ok(maxAbsDiff(result.outputs.logits.data as Float32Array, expected) <= 1e-6, `${protocol} ${codec}`);
        assert.equal(result.attempts, 1);
        const t = result.timing;
        const stages = t.preprocessMs + t.headMs + t.encodeMs + t.networkMs + t.decodeMs + t.queueMs + t.tailMs + t.outputEncodeMs + t.outputDecodeMs + t.otherMs;
        assert.ok(Math.abs(stages - t.totalMs) < 1e-6 * Math.max(t.totalMs, 1) + 1e-9, "stages add up to the total");
        assert.ok(t.tailMs > 0 && t.serverMs >= t.tailMs, "the server's own account is carried");
        assert.ok(result.bytesSent > 0 && result.requestBytes > result.bytesSent);
      }
    });
  }

  it("in the result form asked for: top-k values and int64 indices, or another codec", async () => {
    const input = f32(join(fx.work, "input.f32"));
    const logits = f32(join(fx.work, "expected-fp32.f32"));
    const order = Array.from(logits.keys()).sort((a, b) => logits[b] - logits[a]);
    const top = await (await connect(fx.bundle, fx.web, { result: "top2" })).infer(input, [1, 3, 8, 8]);
    assert.deepEqual(Object.keys(top.outputs).sort(), ["logits:topk_indices", "logits:topk_values"]);
    assert.deepEqual(Array.from(top.outputs["logits:topk_indices"].data as BigInt64Array, Number), order.slice(0, 2));
    assert.ok(maxAbsDiff(top.outputs["logits:topk_values"].data as Float32Array, order.slice(0, 2).map((i) => logits[i])) <= 1e-6);
    const half = await (await connect(fx.bundle, fx.web, { result: "fp16+zstd", protocol: "grpc-web" })).infer(input, [1, 3, 8, 8]);
    assert.ok(maxAbsDiff(half.outputs.logits.data as Float32Array, logits) <= 2e-3);
    assert.throws(() => parseResultForm(":"), /is not CODEC, topK or topK:CODEC/);
    assert.throws(() => parseResultForm("top5:bf16"), /result form "top5:bf16": unknown encoding/);
    const tooMany = await connect(fx.bundle, fx.web, { result: "top9" });
    await assert.rejects(tooMany.infer(input, [1, 3, 8, 8]), (err: ConnectError) => err.code === Code.InvalidArgument && /top/.test(err.message));
  });

  it("over native gRPC (HTTP/2) too", async () => {
    const client = await connect(fx.bundle, fx.grpc, { protocol: "grpc" });
    const result = await client.infer(f32(join(fx.work, "input.f32")), [1, 3, 8, 8]);
    assert.ok(maxAbsDiff(result.outputs.logits.data as Float32Array, f32(join(fx.work, "expected-fp32.f32"))) <= 1e-6);
  });

  it("needs a listed token where the server has tokens", async () => {
    const input = f32(join(fx.work, "input.f32"));
    const anonymous = await connect(fx.bundle, fx.guarded, { protocol: "grpc-web" });
    await assert.rejects(anonymous.infer(input, [1, 3, 8, 8]), (err: ConnectError) => err.code === Code.Unauthenticated && /missing credentials/.test(err.message));
    const wrong = await connect(fx.bundle, fx.guarded, { token: "not-it" });
    await assert.rejects(wrong.infer(input, [1, 3, 8, 8]), (err: ConnectError) => err.code === Code.Unauthenticated && /invalid token/.test(err.message));
    const listed = await connect(fx.bundle, fx.guarded, { token: fx.token });
    assert.equal((await listed.infer(input, [1, 3, 8, 8])).outputs.logits.shape.join(","), "1,4");
  });

  it("over mutual TLS, on the web port and the native one, with the client's certificate only", async () => {
    const input = f32(join(fx.work, "input.f32"));
    const pem = (path: string) => readFileSync(path);
    const tls = { ca: pem(fx.certs.ca), cert: pem(fx.certs.cert), key: pem(fx.certs.key) };
    for (const [url, protocol] of [[fx.secure, "grpc-web"], [fx.secure, "connect"], [fx.secureGrpc, "grpc"]] as const) {
      const client = await connect(fx.bundle, url, { protocol, tls });
      const result = await client.infer(input, [1, 3, 8, 8]);
      assert.ok(maxAbsDiff(result.outputs.logits.data as Float32Array, f32(join(fx.work, "expected-fp32.f32"))) <= 1e-6, protocol);
    }
    const anonymous = await connect(fx.bundle, fx.secure, { tls: { ca: tls.ca }, retry: { attempts: 1, initialBackoffMs: 1, maxBackoffMs: 1, multiplier: 1 } });
    // Refused in the handshake: the server closes the connection (under TLS 1.3 after the client
    // has finished its side), which Node reports as whichever write or read then failed.
    await assert.rejects(anonymous.infer(input, [1, 3, 8, 8]), (err: ConnectError) => /EPIPE|ECONNRESET|socket hang up/.test(err.message));
  });

  it("is refused with the server's reason for a head that is not the tail's", async () => {
    const bundle = await loadBundleDir(fx.bundle);
    bundle.manifest.bundleHash = "0".repeat(64);
    const client = await EdgeClient.create(ort as unknown as OrtModule, bundle, createConnectTransport({ baseUrl: fx.web, httpVersion: "1.1" }));
    await assert.rejects(client.infer(f32(join(fx.work, "input.f32")), [1, 3, 8, 8]), (err: ConnectError) => err.code === Code.FailedPrecondition && /bundle_hash/.test(err.message));
  });

  it("is retried while the server is UNAVAILABLE, as often as the policy allows", async () => {
    let calls = 0;
    const count: Interceptor = (next) => (req) => {
      calls++;
      return next(req);
    };
    // A port nothing listens on: every call fails UNAVAILABLE (connection refused).
    const transport = createConnectTransport({ baseUrl: "http://127.0.0.1:9", httpVersion: "1.1", interceptors: [count] });
    const bundle = await loadBundleDir(fx.bundle);
    const client = await EdgeClient.create(ort as unknown as OrtModule, bundle, transport, {
      retry: { attempts: 3, initialBackoffMs: 5, maxBackoffMs: 20, multiplier: 2 },
    });
    await assert.rejects(client.infer(f32(join(fx.work, "input.f32")), [1, 3, 8, 8]), (err: ConnectError) => err.code === Code.Unavailable);
    assert.equal(calls, 3);
  });

  it("falls back to the bundle's tail when the server is away, in the form asked for", async () => {
    const dead = "http://127.0.0.1:9";
    const retry = { attempts: 2, initialBackoffMs: 5, maxBackoffMs: 10, multiplier: 2 };
    const input = f32(join(fx.work, "input.f32"));
    const expected = f32(join(fx.work, "expected-fp32.f32"));
    const here = await (await connect(fx.bundle, dead, { fallback: true, retry })).infer(input, [1, 3, 8, 8]);
    assert.equal(here.fallback, true);
    assert.match(here.reason ?? "", /^Unavailable/);
    assert.equal(here.attempts, 2);
    assert.ok(maxAbsDiff(here.outputs.logits.data as Float32Array, expected) <= 1e-5);
    assert.ok(here.timing.tailMs > 0 && here.bytesSent === 0);
    const top = await (await connect(fx.bundle, dead, { fallback: true, retry, result: "top2" })).infer(input, [1, 3, 8, 8]);
    const order = Array.from(expected.keys()).sort((a, b) => expected[b] - expected[a]);
    assert.deepEqual(Array.from(top.outputs["logits:topk_indices"].data as BigInt64Array, Number), order.slice(0, 2));
    // Served, the same client's answer says it came from the server.
    const served = await (await connect(fx.bundle, fx.web, { fallback: true })).infer(input, [1, 3, 8, 8]);
    assert.equal(served.fallback, false);
    // Without the tail loaded there is nothing to fall back to.
    const headOnly = await loadBundleDir(fx.bundle);
    await assert.rejects(
      EdgeClient.create(ort as unknown as OrtModule, headOnly, createConnectTransport({ baseUrl: dead, httpVersion: "1.1" }), { fallback: true }),
      /withTail/,
    );
  });

  it("sends a request refused by a full queue again after the server's hint, and it is answered", async () => {
    const input = f32(join(fx.work, "input.f32"));
    const clients = await Promise.all([0, 1, 2].map(() => connect(fx.crowdedBundle, fx.crowded, { protocol: "grpc-web" })));
    const results = await Promise.all(clients.map((c) => c.infer(input, [1, 3, 8, 8])));
    // Two fit the queue; the third is refused, and sent again (more than once if the hint, the
    // server's estimate, was short) until the batch of the first two has left room.
    const attempts = results.map((r) => r.attempts).sort();
    assert.deepEqual(attempts.slice(0, 2), [1, 1]);
    assert.ok(attempts[2] >= 2, `${attempts}`);
    for (const r of results) assert.ok(maxAbsDiff(r.outputs.logits.data as Float32Array, f32(join(fx.work, "expected-fp32.f32"))) <= 1e-6);
  });

  it("waits out a full queue's retry hint, and gives up at once on what a retry cannot change", () => {
    const full = new ConnectError("queue full", Code.ResourceExhausted, { [RETRY_AFTER_KEY]: "250" });
    assert.equal(retryWaitMs(full, 10), 250);
    const wait = retryWaitMs(new ConnectError("gone", Code.Unavailable), 100)!;
    assert.ok(wait >= 50 && wait <= 100);
    assert.equal(retryWaitMs(new ConnectError("queue full", Code.ResourceExhausted), 10), null, "no hint: gRPC's own limit or a message too large");
    assert.equal(retryWaitMs(new ConnectError("bad", Code.InvalidArgument), 10), null);
  });

  it("refuses a head whose bytes are not the manifest's", async () => {
    await assert.rejects(
      (await import("../bundle.js")).loadBundle(async (name) => {
        const data = new Uint8Array(readFileSync(join(fx.bundle, name)));
        if (name === "head.onnx") data[data.length - 1] ^= 1;
        return data;
      }),
      /sha256 .* does not match/,
    );
  });
});

// The edge client: image → preprocess → head → codec → Infer → decoded outputs, with the time of
// every stage (as edge_runtime.results.RequestTiming) and the bytes it sent. The transport is the
// caller's (gRPC-Web or Connect in a browser, Connect or gRPC in Node), so this core is the same
// everywhere. A call the server could not take (UNAVAILABLE) is retried with exponential backoff
// within the request's deadline, as is a full queue's refusal with the server's retry hint, as
// edge_runtime.retry's policy does.

import { create, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client, type Transport } from "@connectrpc/connect";
import type { Bundle, TensorSpec } from "./bundle.js";
import { type Codec, type DecodedTensor, WIRE_ENCODING, decodeTensor, encodeTensor, parseCodec, parseResultForm } from "./codec.js";
import type { InferenceSession } from "onnxruntime-common";
import { type CutTensor, Head, type OrtModule } from "./head.js";
import {
  Compression,
  InferRequestSchema,
  InferResponseSchema,
  type InferResponse,
  type ResultSpec,
  ResultSpecSchema,
  SplitInference,
} from "./gen/splitinfer/v1/inference_pb.js";
import { type Pixels, preprocessImage } from "./preprocess.js";

export interface RetryPolicy {
  attempts: number;
  initialBackoffMs: number;
  maxBackoffMs: number;
  multiplier: number;
}
// protos.transport.RETRY_AFTER_KEY: the server's hint, in milliseconds, on a full queue.
export const RETRY_AFTER_KEY = "retry-after-ms";
export const DEFAULT_RETRY: RetryPolicy = { attempts: 5, initialBackoffMs: 100, maxBackoffMs: 2000, multiplier: 2 };

/** Milliseconds of one request; the stages add up to totalMs (edge_runtime.results.RequestTiming). */
export interface RequestTiming {
  preprocessMs: number;
  headMs: number;
  encodeMs: number;
  networkMs: number;
  decodeMs: number;
  queueMs: number;
  tailMs: number;
  outputEncodeMs: number;
  outputDecodeMs: number;
  otherMs: number;
  serverMs: number;
  totalMs: number;
}

export interface EdgeResult {
  outputs: Record<string, DecodedTensor>;
  timing: RequestTiming;
  /** Payload bytes of the cut tensors after the codec, and the whole messages serialised. */
  bytesSent: number;
  requestBytes: number;
  responseBytes: number;
  requestId: string;
  attempts: number;
  /** The head's output as sent (before the codec), for a check against a local run. */
  cut: CutTensor[];
  /** The server could not answer and the tail ran here (ClientOptions.fallback); `reason` says why. */
  fallback: boolean;
  reason?: string;
}

export interface ClientOptions {
  codec?: string;
  token?: string;
  timeoutMs?: number;
  retry?: RetryPolicy;
  /** The form of the outputs (ResultSpec): "fp16+zstd", "top5", "top5:fp16", ...; unset: the
   * bundle's default (its manifest's "result"), else raw fp32. Top-k answers each output by two,
   * "<output>:topk_values" and "<output>:topk_indices" (int64), largest first. */
  result?: string;
  sessionOptions?: Parameters<OrtModule["InferenceSession"]["create"]>[1];
  /** Run the tail here when the server cannot answer (UNAVAILABLE, DEADLINE_EXCEEDED or a full
   * queue, once the retries are spent), as edge_runtime's fallback does: the bundle must be loaded
   * with its tail (loadBundle's `withTail`; connect does it). The result says `fallback`. */
  fallback?: boolean;
}

// What a local tail answers for: the server is away or cannot take the request (edge_runtime.fallback).
const FALLBACK_CODES = new Set([Code.Unavailable, Code.DeadlineExceeded, Code.ResourceExhausted]);

const now = () => performance.now();

/** How long to wait before sending a refused request again, or null when sending it again would
 * change nothing (edge_runtime.retry): UNAVAILABLE (the server is not there or restarting) and
 * RESOURCE_EXHAUSTED with the server's `retry-after-ms` hint (its queue is full) are retried,
 * after between half and all of the backoff (the jitter keeps clients that failed together from
 * retrying together), or the hint when that is longer. */
export function retryWaitMs(error: ConnectError, backoffMs: number): number | null {
  const jittered = backoffMs * (0.5 + Math.random() / 2);
  if (error.code === Code.Unavailable) return jittered;
  const raw = error.metadata.get(RETRY_AFTER_KEY);
  const hint = raw === null || raw.trim() === "" ? NaN : Number(raw);
  if (error.code === Code.ResourceExhausted && Number.isFinite(hint) && hint >= 0) return Math.max(jittered, hint);
  return null;
}
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export class EdgeClient {
  private requests = 0;
  // Each cut tensor's clamp (TensorSpec.clamp), read from the manifest once.
  private readonly clamps: Map<string, TensorSpec["clamp"]>;

  private constructor(
    readonly bundle: Bundle,
    readonly head: Head,
    private readonly rpc: Client<typeof SplitInference>,
    private readonly codec: Codec,
    private readonly options: ClientOptions,
    private readonly result: ResultSpec | null,
    private readonly tail: InferenceSession | null,
    private readonly ort: OrtModule,
  ) {
    this.clamps = new Map(bundle.manifest.cut.map((spec) => [spec.name, spec.clamp]));
  }

  static async create(ort: OrtModule, bundle: Bundle, transport: Transport, options: ClientOptions = {}): Promise<EdgeClient> {
    const head = bundle.segments
      ? await Head.segmented(ort, bundle.manifest, bundle.segments, options.sessionOptions)
      : await Head.load(ort, bundle.manifest, bundle.head, options.sessionOptions);
    const codec = parseCodec(options.codec ?? bundle.manifest.codec);
    let result: ResultSpec | null = null;
    if (options.result !== undefined) {
      const form = parseResultForm(options.result);
      result = create(ResultSpecSchema, {
        encoding: WIRE_ENCODING[form.codec.encoding],
        compression: form.codec.compression === "zstd" ? Compression.ZSTD : Compression.NONE,
        topK: form.topK,
      });
    }
    let tail: InferenceSession | null = null;
    if (options.fallback) {
      if (!bundle.tail) throw new Error(`fallback needs the bundle's tail: load ${bundle.manifest.modelId}'s bundle with withTail`);
      tail = await ort.InferenceSession.create(bundle.tail, options.sessionOptions);
    }
    return new EdgeClient(bundle, head, createClient(SplitInference, transport), codec, options, result, tail, ort);
  }

  /** Decoded pixels → the server's answer, preprocessed by the bundle's contract. */
  async inferImage(pixels: Pixels): Promise<EdgeResult> {
    const pre = this.bundle.manifest.preprocess;
    if (pre === null) throw new Error(`bundle ${this.bundle.manifest.modelId} takes tensors, not images (no preprocess in its manifest)`);
    const start = now();
    const input = preprocessImage(pre, pixels);
    return this.infer(input.data, input.dims, now() - start, start);
  }

  /** The model's input tensor → the server's answer. */
  async infer(input: Float32Array, dims: number[], preprocessMs = 0, start = now()): Promise<EdgeResult> {
    const manifest = this.bundle.manifest;
    const t0 = now();
    const cut = await this.head.run(input, dims);
    const t1 = now();
    const tensors = cut.map((t) => encodeTensor(t.name, t.data, t.shape, this.codec, this.clamps.get(t.name)));
    const t2 = now();
    const requestId = `web-${++this.requests}`;
    const request = create(InferRequestSchema, {
      requestId,
      modelId: manifest.modelId,
      bundleHash: manifest.bundleHash,
      tensors,
      ...(this.result === null ? {} : { result: this.result }),
    });
    const requestBytes = toBinary(InferRequestSchema, request).length;
    let called: Awaited<ReturnType<EdgeClient["call"]>>;
    try {
      called = await this.call(request, start);
    } catch (err) {
      const error = ConnectError.from(err);
      if (this.tail === null || !FALLBACK_CODES.has(error.code)) throw err;
      return this.answerHere(cut, error, requestId, requestBytes, preprocessMs, t0, t1, t2, start);
    }
    const { response, rpcMs, attempts } = called;
    const t3 = now();
    const outputs: Record<string, DecodedTensor> = {};
    for (const tensor of response.outputs) outputs[tensor.name] = decodeTensor(tensor);
    const t4 = now();
    const timing = response.timing;
    const server = {
      decodeMs: timing?.decodeMs ?? 0,
      queueMs: timing?.queueMs ?? 0,
      tailMs: timing?.tailMs ?? 0,
      outputEncodeMs: timing?.encodeMs ?? 0,
      serverMs: timing?.totalMs ?? 0,
    };
    const totalMs = t4 - start;
    const networkMs = Math.max(rpcMs - server.serverMs, 0);
    const known = preprocessMs + (t1 - t0) + (t2 - t1) + networkMs + server.decodeMs + server.queueMs + server.tailMs + server.outputEncodeMs + (t4 - t3);
    return {
      outputs,
      timing: {
        preprocessMs,
        headMs: t1 - t0,
        encodeMs: t2 - t1,
        networkMs,
        ...server,
        outputDecodeMs: t4 - t3,
        otherMs: Math.max(totalMs - known, 0),
        totalMs,
      },
      bytesSent: tensors.reduce((n, t) => n + t.data.length, 0),
      requestBytes,
      responseBytes: toBinary(InferResponseSchema, response).length,
      requestId,
      attempts,
      cut,
      fallback: false,
    };
  }

  /** The tail run here on the head's own tensors (exact: no codec between), in the result form
   * asked for, as edge_runtime.client's fallback answers. */
  private async answerHere(
    cut: CutTensor[], error: ConnectError, requestId: string, requestBytes: number,
    preprocessMs: number, t0: number, t1: number, t2: number, start: number,
  ): Promise<EdgeResult> {
    const tail = this.tail!;
    const t3 = now();
    const feeds = Object.fromEntries(cut.map((t) => [t.name, new this.ort.Tensor("float32", t.data, t.shape)]));
    const ran = await tail.run(feeds);
    const t4 = now();
    const raw: Record<string, DecodedTensor> = {};
    for (const spec of this.bundle.manifest.outputs) {
      const t = ran[spec.name];
      raw[spec.name] = { name: spec.name, shape: [...t.dims], data: t.data as Float32Array };
    }
    const topK = this.result?.topK ?? parseResultForm(this.bundle.manifest.result || "fp32").topK;
    const outputs = topK > 0 ? topOutputs(raw, topK) : raw;
    const totalMs = now() - start;
    const known = preprocessMs + (t1 - t0) + (t2 - t1) + (t3 - t2) + (t4 - t3);
    return {
      outputs,
      timing: {
        preprocessMs, headMs: t1 - t0, encodeMs: t2 - t1,
        // The time spent on the server that did not answer, retries included.
        networkMs: t3 - t2,
        decodeMs: 0, queueMs: 0, tailMs: t4 - t3, outputEncodeMs: 0, outputDecodeMs: 0,
        otherMs: Math.max(totalMs - known, 0), serverMs: 0, totalMs,
      },
      bytesSent: 0, requestBytes, responseBytes: 0, requestId, attempts: (error as { attempts?: number }).attempts ?? 1, cut,
      fallback: true,
      reason: `${Code[error.code]}: ${error.rawMessage}`,
    };
  }

  private async call(request: Parameters<Client<typeof SplitInference>["infer"]>[0], start: number): Promise<{ response: InferResponse; rpcMs: number; attempts: number }> {
    const policy = this.options.retry ?? DEFAULT_RETRY;
    const timeoutMs = this.options.timeoutMs ?? 30_000;
    const headers: Record<string, string> = this.options.token ? { authorization: `Bearer ${this.options.token}` } : {};
    let backoff = policy.initialBackoffMs;
    for (let attempt = 1; ; attempt++) {
      const left = timeoutMs - (now() - start);
      const sent = now();
      try {
        const response = await this.rpc.infer(request, { timeoutMs: Math.max(Math.floor(left), 1), headers });
        return { response, rpcMs: now() - sent, attempts: attempt };
      } catch (err) {
        const error = ConnectError.from(err);
        const wait = retryWaitMs(error, backoff);
        if (wait === null || attempt >= policy.attempts || now() - start + wait >= timeoutMs) throw Object.assign(error, { attempts: attempt });
        await sleep(wait);
        backoff = Math.min(backoff * policy.multiplier, policy.maxBackoffMs);
      }
    }
  }
}

/** Each output's top k along its last axis, largest first (ties to the lower index), named as a
 * server names them (protos.result_form.select): "<output>:topk_values" and "<output>:topk_indices". */
function topOutputs(outputs: Record<string, DecodedTensor>, k: number): Record<string, DecodedTensor> {
  const selected: Record<string, DecodedTensor> = {};
  for (const [name, t] of Object.entries(outputs)) {
    const scores = t.data as Float32Array;
    const classes = t.shape[t.shape.length - 1];
    if (k > classes) throw new Error(`top ${k} of output ${name}: it has ${classes} scores`);
    const rows = scores.length / classes;
    const values = new Float32Array(rows * k);
    const indices = new BigInt64Array(rows * k);
    for (let r = 0; r < rows; r++) {
      const order = Array.from({ length: classes }, (_, i) => i).sort((a, b) => scores[r * classes + b] - scores[r * classes + a] || a - b);
      for (let j = 0; j < k; j++) {
        values[r * k + j] = scores[r * classes + order[j]];
        indices[r * k + j] = BigInt(order[j]);
      }
    }
    const shape = [...t.shape.slice(0, -1), k];
    selected[`${name}:topk_values`] = { name: `${name}:topk_values`, shape, data: values };
    selected[`${name}:topk_indices`] = { name: `${name}:topk_indices`, shape, data: indices };
  }
  return selected;
}

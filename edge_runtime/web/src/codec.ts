// The tensor codec of the wire contract (protos/codec.py, the comment atop inference.proto): an
// encoding (fp32 raw, fp16, int8 affine per tensor, int8 or 4-bit affine per channel) then a
// compression (none, zstd). Each encoding follows the Python encoder's float32 arithmetic step
// by step, so a tensor encodes to the same bytes on both sides (zstd frames aside: any valid
// frame of the same bytes is accepted).

import { create } from "@bufbuild/protobuf";
import {
  Compression,
  DType,
  Encoding,
  type Tensor,
  TensorSchema,
} from "./gen/splitinfer/v1/inference_pb.js";
import { zstdCompress, zstdDecompress } from "./zstd.js";

export const ENCODINGS = ["fp32", "fp16", "int8", "int8ch", "int4ch"] as const;
export type EncodingName = (typeof ENCODINGS)[number];
export interface Codec {
  encoding: EncodingName;
  compression: "none" | "zstd";
  level: number;
}

/** "int8+zstd", "fp16", ... → a Codec (as protos.codec.Codec.parse). */
export function parseCodec(text: string): Codec {
  const [encoding, compression = "none"] = text.trim().toLowerCase().split("+", 2);
  if (!(ENCODINGS as readonly string[]).includes(encoding)) throw new Error(`unknown encoding ${JSON.stringify(encoding)}; registered: ${ENCODINGS.join(", ")}`);
  if (compression !== "none" && compression !== "zstd") throw new Error(`unknown compression ${JSON.stringify(compression)}; registered: none, zstd`);
  return { encoding: encoding as EncodingName, compression, level: 1 };
}

/** The form of a reply's outputs (protos/result_form.py): `fp32`, `fp16+zstd`, `top5`, `top5:fp16`. */
export interface ResultForm {
  codec: Codec;
  topK: number;
}

export function parseResultForm(text: string): ResultForm {
  const match = /^(?:top(\d+))?(?::?([a-z0-9]+(?:\+[a-z0-9]+)?))?$/.exec(text.trim().toLowerCase());
  if (match === null || !(match[1] || match[2])) {
    throw new Error(`result form ${JSON.stringify(text)} is not CODEC, topK or topK:CODEC (e.g. fp16+zstd, top5)`);
  }
  try {
    return { codec: parseCodec(match[2] ?? "fp32"), topK: Number(match[1] ?? 0) };
  } catch (err) {
    throw new Error(`result form ${JSON.stringify(text)}: ${(err as Error).message}`);
  }
}

const f = Math.fround;

/** numpy's rint and Python's round(): halves to the even neighbour. */
function rint(x: number): number {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

function clip(x: number, lo: number, hi: number): number {
  return x < lo ? lo : x > hi ? hi : x;
}

function bytesOf(view: ArrayBufferView): Uint8Array {
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength).slice();
}

// float32 → IEEE half, round to nearest even, as numpy's astype("<f2").
const scratch = new DataView(new ArrayBuffer(4));
export function toHalf(value: number): number {
  scratch.setFloat32(0, value);
  const bits = scratch.getUint32(0);
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  let mant = bits & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 | (mant >>> 13) : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rest = mant & ((1 << shift) - 1);
    let out = mant >>> shift;
    if (rest > half || (rest === half && (out & 1))) out += 1;
    return sign | out;
  }
  let out = (e << 10) | (mant >>> 13);
  const rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && (out & 1))) out += 1; // may carry into the exponent: right
  return sign | out;
}

export function fromHalf(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

interface Encoded {
  payload: Uint8Array;
  scale?: number;
  zeroPoint?: number;
  channelAxis?: number;
  channelScales?: number[];
  channelZeroPoints?: number[];
}

function minMax(values: Float32Array, start = 0, step = 1, count = values.length): [number, number] {
  let lo = Infinity;
  let hi = -Infinity;
  for (let i = 0, j = start; i < count; i++, j += step) {
    const v = values[j];
    if (Number.isNaN(v)) return [NaN, NaN];
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  return [lo, hi];
}

function encodeFp16(values: Float32Array): Encoded {
  const half = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) {
    half[i] = toHalf(values[i]);
    if ((half[i] & 0x7fff) === 0x7c00 && Number.isFinite(values[i])) {
      throw new Error("fp16 encoding cannot carry values beyond ±65504; use fp32 or int8");
    }
  }
  return { payload: bytesOf(half) };
}

function encodeInt8(values: Float32Array): Encoded {
  if (values.length === 0) return { payload: new Uint8Array(0), scale: 1, zeroPoint: 0 };
  const [min, max] = minMax(values);
  const lo = Math.min(min, 0);
  const hi = Math.max(max, 0);
  if (!(Number.isFinite(lo) && Number.isFinite(hi))) throw new Error("int8 encoding cannot carry non-finite values (NaN or inf); use fp32 or fp16");
  const scale = (hi - lo) / 255.0 || 1.0;
  const zeroPoint = clip(rint(-128.0 - lo / scale), -128, 127);
  const inv = f(1.0 / scale);
  const zp = f(zeroPoint);
  const q = new Int8Array(values.length);
  for (let i = 0; i < values.length; i++) q[i] = clip(rint(f(f(values[i] * inv) + zp)), -128, 127);
  return { payload: bytesOf(q), scale, zeroPoint };
}

function encodeChannels(values: Float32Array, shape: number[], bits: 8 | 4): Encoded {
  const [qmin, qmax] = bits === 8 ? [-128, 127] : [0, 15];
  const dims = shape.length === 0 ? [1] : shape;
  const axis = dims.length >= 2 ? 1 : 0;
  const channels = dims[axis];
  const inner = dims.slice(axis + 1).reduce((a, b) => a * b, 1);
  const outer = dims.slice(0, axis).reduce((a, b) => a * b, 1);
  if (values.length === 0) {
    return { payload: new Uint8Array(0), channelAxis: axis, channelScales: Array(channels).fill(1), channelZeroPoints: Array(channels).fill(0) };
  }
  const scales: number[] = [];
  const zeroPoints: number[] = [];
  const q = new Float32Array(values.length);
  for (let c = 0; c < channels; c++) {
    let lo = 0;
    let hi = 0;
    for (let o = 0; o < outer; o++) {
      const [mn, mx] = minMax(values, (o * channels + c) * inner, 1, inner);
      if (Number.isNaN(mn) || !Number.isFinite(mn) || !Number.isFinite(mx)) {
        throw new Error(`${bits === 8 ? "int8ch" : "int4ch"} encoding cannot carry non-finite values (NaN or inf); use fp32 or fp16`);
      }
      lo = Math.min(lo, mn);
      hi = Math.max(hi, mx);
    }
    let scale = (hi - lo) / (qmax - qmin);
    if (scale === 0) scale = 1.0;
    const zeroPoint = clip(rint(qmin - lo / scale), qmin, qmax);
    scales.push(scale);
    zeroPoints.push(zeroPoint);
    const inv = f(1.0 / scale);
    const zp = f(zeroPoint);
    for (let o = 0; o < outer; o++) {
      const start = (o * channels + c) * inner;
      for (let i = start; i < start + inner; i++) q[i] = clip(rint(f(f(values[i] * inv) + zp)), qmin, qmax);
    }
  }
  let payload: Uint8Array;
  if (bits === 8) {
    payload = bytesOf(Int8Array.from(q));
  } else {
    payload = new Uint8Array((q.length + 1) >> 1);
    for (let i = 0; i < q.length; i++) payload[i >> 1] |= i % 2 === 0 ? q[i] : q[i] << 4;
  }
  return { payload, channelAxis: axis, channelScales: scales, channelZeroPoints: zeroPoints };
}

export const WIRE_ENCODING: Record<EncodingName, Encoding> = {
  fp32: Encoding.RAW,
  fp16: Encoding.FP16,
  int8: Encoding.INT8_AFFINE,
  int8ch: Encoding.INT8_CHANNEL,
  int4ch: Encoding.UINT4_CHANNEL,
};

/** `values` clamped to `clamp` when that can change their bytes (a lossy or compressed encoding),
 * as protos.codec.clamped: the tail clamps them to that range anyway. */
export function clampedValues(values: Float32Array, codec: Codec, clamp?: [number | null, number | null]): Float32Array {
  if (!clamp || (codec.encoding === "fp32" && codec.compression === "none")) return values;
  const low = clamp[0] ?? -Infinity;
  const high = clamp[1] ?? Infinity;
  const out = new Float32Array(values.length);
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    // NaN stays NaN, as numpy's clip leaves it.
    out[i] = v < low ? low : v > high ? high : v;
  }
  return out;
}

/** One float32 tensor → a wire Tensor under `codec`, as protos.codec.encode (clamped first to
 * `clamp`, the cut tensor's range in its manifest, when given). */
export function encodeTensor(
  name: string,
  rawValues: Float32Array,
  shape: number[],
  codec: Codec,
  clamp?: [number | null, number | null],
): Tensor {
  const values = clampedValues(rawValues, codec, clamp);
  const encoded =
    codec.encoding === "fp32" ? { payload: bytesOf(values) }
    : codec.encoding === "fp16" ? encodeFp16(values)
    : codec.encoding === "int8" ? encodeInt8(values)
    : encodeChannels(values, shape, codec.encoding === "int8ch" ? 8 : 4);
  const data = codec.compression === "zstd" ? zstdCompress(encoded.payload, codec.level) : encoded.payload;
  return create(TensorSchema, {
    name,
    dtype: DType.DTYPE_FLOAT32,
    shape: shape.map(BigInt),
    encoding: WIRE_ENCODING[codec.encoding],
    compression: codec.compression === "zstd" ? Compression.ZSTD : Compression.NONE,
    scale: encoded.scale ?? 0,
    zeroPoint: encoded.zeroPoint ?? 0,
    channelAxis: encoded.channelAxis ?? 0,
    channelScales: encoded.channelScales ?? [],
    channelZeroPoints: encoded.channelZeroPoints ?? [],
    data,
  });
}

/** A decoded wire tensor: float32 values, or int64 ones (top-k indices) as BigInt64Array. */
export interface DecodedTensor {
  name: string;
  shape: number[];
  data: Float32Array | BigInt64Array | Int32Array | Uint8Array | Int8Array;
}

const ITEMSIZE: Partial<Record<DType, number>> = {
  [DType.DTYPE_FLOAT32]: 4,
  [DType.DTYPE_FLOAT16]: 2,
  [DType.DTYPE_INT8]: 1,
  [DType.DTYPE_UINT8]: 1,
  [DType.DTYPE_INT32]: 4,
  [DType.DTYPE_INT64]: 8,
  [DType.DTYPE_BOOL]: 1,
};

/** A wire Tensor → its values, checking the payload length against the shape (protos.codec.decode). */
export function decodeTensor(tensor: Tensor): DecodedTensor {
  const shape = tensor.shape.map(Number);
  if (shape.some((d) => d < 0)) throw new Error(`tensor ${tensor.name}: negative dimension in shape [${shape}]`);
  const numel = shape.reduce((a, b) => a * b, 1);
  const itemsize = ITEMSIZE[tensor.dtype];
  if (itemsize === undefined) throw new Error(`tensor ${tensor.name}: unknown dtype enum value ${tensor.dtype}`);
  const lossy = tensor.encoding !== Encoding.RAW;
  if (lossy && tensor.dtype !== DType.DTYPE_FLOAT32) throw new Error(`tensor ${tensor.name}: a lossy encoding needs dtype FLOAT32`);
  const expected =
    tensor.encoding === Encoding.RAW ? numel * itemsize
    : tensor.encoding === Encoding.FP16 ? 2 * numel
    : tensor.encoding === Encoding.UINT4_CHANNEL ? (numel + 1) >> 1
    : tensor.encoding === Encoding.INT8_AFFINE || tensor.encoding === Encoding.INT8_CHANNEL ? numel
    : -1;
  if (expected < 0) throw new Error(`tensor ${tensor.name}: unknown encoding enum value ${tensor.encoding}`);
  let payload: Uint8Array;
  if (tensor.compression === Compression.ZSTD) payload = zstdDecompress(tensor.data, expected);
  else if (tensor.compression === Compression.NONE) payload = tensor.data;
  else throw new Error(`tensor ${tensor.name}: unknown compression enum value ${tensor.compression}`);
  if (payload.length !== expected) {
    throw new Error(`tensor ${tensor.name}: payload is ${payload.length} bytes, shape [${shape}] needs ${expected}`);
  }
  // A copy of its own, aligned, whatever the payload is a view of (Node's Buffer.slice is not a copy).
  const buffer = new Uint8Array(payload).buffer;
  const name = tensor.name;
  switch (tensor.encoding) {
    case Encoding.RAW:
      if (tensor.dtype === DType.DTYPE_FLOAT32) return { name, shape, data: new Float32Array(buffer) };
      if (tensor.dtype === DType.DTYPE_INT64) return { name, shape, data: new BigInt64Array(buffer) };
      if (tensor.dtype === DType.DTYPE_INT32) return { name, shape, data: new Int32Array(buffer) };
      if (tensor.dtype === DType.DTYPE_INT8) return { name, shape, data: new Int8Array(buffer) };
      if (tensor.dtype === DType.DTYPE_FLOAT16) return { name, shape, data: Float32Array.from(new Uint16Array(buffer), fromHalf) };
      return { name, shape, data: new Uint8Array(buffer) };
    case Encoding.FP16:
      return { name, shape, data: Float32Array.from(new Uint16Array(buffer), fromHalf) };
    case Encoding.INT8_AFFINE: {
      if (!(Number.isFinite(tensor.scale) && tensor.scale > 0)) throw new Error(`int8 affine scale must be a finite positive number, got ${tensor.scale}`);
      const scale = f(tensor.scale);
      const zp = f(tensor.zeroPoint);
      return { name, shape, data: Float32Array.from(new Int8Array(buffer), (q) => f(f(q - zp) * scale)) };
    }
    default: {
      const axis = tensor.channelAxis;
      const dims = shape.length === 0 ? [1] : shape;
      const channels = dims[axis];
      if (tensor.channelScales.length !== channels || tensor.channelZeroPoints.length !== channels) {
        throw new Error(`tensor ${name}: ${tensor.channelScales.length} scales and ${tensor.channelZeroPoints.length} zero points for ${channels} channels`);
      }
      const inner = dims.slice(axis + 1).reduce((a, b) => a * b, 1);
      const raw = tensor.encoding === Encoding.INT8_CHANNEL ? new Int8Array(buffer) : null;
      const out = new Float32Array(numel);
      for (let i = 0; i < numel; i++) {
        const q = raw ? raw[i] : (payload[i >> 1] >> (i % 2 ? 4 : 0)) & 0x0f;
        const c = Math.floor(i / inner) % channels;
        out[i] = f(f(q - f(tensor.channelZeroPoints[c])) * f(tensor.channelScales[c]));
      }
      return { name, shape, data: out };
    }
  }
}

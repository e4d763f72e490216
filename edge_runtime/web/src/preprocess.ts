// The input contract of an image bundle (protos/preprocess.py), reproduced bit for bit: RGB, the
// shorter side resized by Pillow's antialiased BILINEAR filter, a centre crop, then /255, -mean,
// /std per channel in float32 arithmetic, NCHW with a batch of 1.
//
// The resize is a port of Pillow's own (libImaging/Resample.c: precompute_coeffs, the 8-bit
// fixed-point coefficients, two passes through a uint8 image in Pillow's order): no browser
// or npm resizer filters the same way, and a textbook bilinear moves a classifier's logits by
// tenths (the Python docstring's figure), so "the same tensor" needs the same arithmetic.

export interface Preprocess {
  size: number;
  resize: number;
  mean: [number, number, number];
  std: [number, number, number];
}

/** Pixels as decoded: `channels` (1, 3 or 4) bytes per pixel, row-major. */
export interface Pixels {
  width: number;
  height: number;
  channels: number;
  data: Uint8Array | Uint8ClampedArray;
}

/** The steps every preprocess record names, each with the one value this port (and Python) implements. */
export const FIXED_STEPS: Record<string, string> = {
  color: "RGB",
  resize_filter: "pillow-bilinear-antialiased",
  size_rounding: "python-round-half-even",
  crop: "centre, offsets floored",
  scale: "divide by 255",
  layout: "NCHW",
  dtype: "float32",
};

/** The manifest's "preprocess" object; refuses a step this port does not implement. */
export function parsePreprocess(data: Record<string, unknown>): Preprocess {
  for (const [key, value] of Object.entries(FIXED_STEPS)) {
    if (key in data && data[key] !== value) {
      throw new Error(`preprocess ${key} ${JSON.stringify(data[key])} is not supported; only ${JSON.stringify(value)}`);
    }
  }
  const triple = (v: unknown): [number, number, number] => {
    if (!Array.isArray(v) || v.length !== 3) throw new Error(`preprocess mean/std ${JSON.stringify(v)} needs 3 values`);
    return [Number(v[0]), Number(v[1]), Number(v[2])];
  };
  const pre = { size: Number(data.size), resize: Number(data.resize), mean: triple(data.mean), std: triple(data.std) };
  if (!(pre.size >= 1 && pre.resize >= pre.size)) throw new Error(`preprocess size ${pre.size} and resize ${pre.resize} must have 1 <= size <= resize`);
  return pre;
}

/** Python's round(): halves go to the even neighbour. */
export function roundHalfEven(x: number): number {
  const floor = Math.floor(x);
  const diff = x - floor;
  if (diff > 0.5) return floor + 1;
  if (diff < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

/** Pixels → RGB, 3 bytes a pixel (grey repeated, alpha dropped), as protos.preprocess.as_rgb. */
export function asRgb(pixels: Pixels): Uint8Array {
  const { width, height, channels, data } = pixels;
  if (![1, 3, 4].includes(channels)) throw new Error(`an image must have 1, 3 or 4 channels, got ${channels}`);
  if (data.length !== width * height * channels) throw new Error(`${data.length} bytes for a ${width}x${height}x${channels} image`);
  const rgb = new Uint8Array(width * height * 3);
  for (let i = 0; i < width * height; i++) {
    for (let c = 0; c < 3; c++) rgb[i * 3 + c] = data[i * channels + (channels === 1 ? 0 : c)];
  }
  return rgb;
}

const PRECISION_BITS = 32 - 8 - 2;

interface Coefficients {
  ksize: number;
  bounds: Int32Array; // per output pixel: first input index, count
  weights: Int32Array; // ksize per output pixel, fixed point with PRECISION_BITS
}

function bilinear(x: number): number {
  x = Math.abs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

// Resample.c precompute_coeffs + normalize_coeffs_8bpc, for the box (0, inSize).
function coefficients(inSize: number, outSize: number): Coefficients {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1.0);
  const support = 1.0 * filterscale; // BILINEAR's support is 1
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const weights = new Int32Array(outSize * ksize);
  const k = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1.0 / filterscale;
    // C's (int) truncates toward zero
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    let ww = 0.0;
    k.fill(0);
    for (let x = 0; x < xmax; x++) {
      const w = bilinear((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (let x = 0; x < xmax; x++) if (ww !== 0.0) k[x] /= ww;
    for (let x = 0; x < ksize; x++) {
      const v = k[x] * (1 << PRECISION_BITS);
      weights[xx * ksize + x] = Math.trunc(v < 0 ? -0.5 + v : 0.5 + v);
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, weights };
}

function clip8(ss: number): number {
  const v = Math.floor(ss / (1 << PRECISION_BITS));
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

// One pass along x (or y) of an RGB image, into a uint8 image as Pillow's 8-bit passes write.
function resamplePass(image: Uint8Array, width: number, height: number, outSize: number, alongX: boolean): Uint8Array {
  const { ksize, bounds, weights } = coefficients(alongX ? width : height, outSize);
  const outW = alongX ? outSize : width;
  const outH = alongX ? height : outSize;
  const out = new Uint8Array(outW * outH * 3);
  for (let y = 0; y < outH; y++) {
    for (let x = 0; x < outW; x++) {
      const o = alongX ? x : y;
      const first = bounds[o * 2];
      const count = bounds[o * 2 + 1];
      for (let c = 0; c < 3; c++) {
        let ss = 1 << (PRECISION_BITS - 1);
        for (let i = 0; i < count; i++) {
          const pixel = alongX ? (y * width + first + i) * 3 : ((first + i) * width + x) * 3;
          ss += image[pixel + c] * weights[o * ksize + i];
        }
        out[(y * outW + x) * 3 + c] = clip8(ss);
      }
    }
  }
  return out;
}

/** Pillow's Image.resize((outW, outH), Image.BILINEAR) of an RGB image (3 bytes a pixel). Its
 * two passes round to uint8 in between, so their order matters: Pillow runs the vertical one
 * first when the height shrinks by more than twice as many pixels as the width (docs/contract.md). */
export function resizeBilinear(rgb: Uint8Array, width: number, height: number, outW: number, outH: number): Uint8Array {
  const verticalFirst = height - outH > 0 && height - outH > 2 * (width - outW);
  let image = rgb;
  let w = width;
  let h = height;
  for (const alongX of verticalFirst ? [false, true] : [true, false]) {
    const size = alongX ? outW : outH;
    if (size === (alongX ? w : h)) continue;
    image = resamplePass(image, w, h, size, alongX);
    if (alongX) w = size;
    else h = size;
  }
  return image;
}

/** An image → the model's input, 1x3xSIZExSIZE float32, as ImagePreprocess.__call__. */
export function preprocessImage(pre: Preprocess, pixels: Pixels): { data: Float32Array; dims: number[] } {
  const rgb = asRgb(pixels);
  const { width, height } = pixels;
  const ratio = pre.resize / Math.min(height, width);
  const newW = Math.max(pre.size, roundHalfEven(width * ratio));
  const newH = Math.max(pre.size, roundHalfEven(height * ratio));
  const resized = resizeBilinear(rgb, width, height, newW, newH);
  const top = Math.floor((newH - pre.size) / 2);
  const left = Math.floor((newW - pre.size) / 2);
  const s = pre.size;
  const out = new Float32Array(3 * s * s);
  const f = Math.fround;
  for (let c = 0; c < 3; c++) {
    const mean = f(pre.mean[c]);
    const std = f(pre.std[c]);
    for (let y = 0; y < s; y++) {
      for (let x = 0; x < s; x++) {
        const value = f(resized[((y + top) * newW + x + left) * 3 + c] / 255);
        out[(c * s + y) * s + x] = f(f(value - mean) / std);
      }
    }
  }
  return { data: out, dims: [1, 3, s, s] };
}

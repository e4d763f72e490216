// zstd through @bokuweb/zstd-wasm (libzstd compiled to WebAssembly), the same library in Node and
// in browsers. Its module must be initialised once before use: `initZstd()`.

import { compress, decompress, init } from "@bokuweb/zstd-wasm";

let ready: Promise<void> | undefined;

/** Loads the wasm module once; `wasmUrl` where a browser page serves zstd.wasm. */
export function initZstd(wasmUrl?: string): Promise<void> {
  // The browser build's init takes the wasm's URL; Node's reads the file beside its module.
  ready ??= (init as (path?: string) => Promise<void>)(wasmUrl);
  return ready;
}

export function zstdCompress(data: Uint8Array, level: number): Uint8Array {
  return compress(data, level);
}

/** Refuses a frame that inflates past `expected` bytes (a decompression bomb). */
export function zstdDecompress(data: Uint8Array, expected: number): Uint8Array {
  const out = decompress(data);
  if (out.length > expected) throw new Error(`zstd data inflates beyond the ${expected} bytes its shape allows (decompression bomb?)`);
  return out;
}

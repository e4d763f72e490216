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

/** Refuses a frame that inflates past `expected` bytes (a decompression bomb). A frame that does
 * not declare its size gets room for one byte more than `expected` (the library's default, 1 MiB,
 * would refuse a larger tensor); one that declares a size gets that, so a hostile declared size is
 * refused by the allocation failing, or here after the fact. */
export function zstdDecompress(data: Uint8Array, expected: number): Uint8Array {
  let out: Uint8Array;
  try {
    out = decompress(data, { defaultHeapSize: expected + 1 });
  } catch (err) {
    // The library says only "code -N": corrupt data, or a frame larger than the room given.
    throw new Error(`corrupt zstd data, or it inflates beyond the ${expected} bytes its shape allows: ${(err as Error).message}`);
  }
  if (out.length > expected) throw new Error(`zstd data inflates beyond the ${expected} bytes its shape allows (decompression bomb?)`);
  return out;
}

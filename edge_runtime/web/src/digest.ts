// SHA-256 by WebCrypto, which browsers and Node both have: the digests a bundle is checked by.

import { BundleError } from "./errors.js";

export async function sha256Hex(data: Uint8Array): Promise<string> {
  if (globalThis.crypto?.subtle === undefined) {
    // Browsers give WebCrypto only to secure contexts: https, or a page on localhost.
    throw new BundleError("WebCrypto is not available here (a page over plain http from another host): serve the page over https to check the bundle");
  }
  const digest = await globalThis.crypto.subtle.digest("SHA-256", data as Uint8Array<ArrayBuffer>);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

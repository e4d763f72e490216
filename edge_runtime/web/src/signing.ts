// Signed bundles, verified as protos/signing.py verifies them: BUNDLE/manifest.sig is a JSON record
// {algorithm "ed25519", key_id, manifest_sha256, signature (base64)}, where the signature is
// Ed25519 (WebCrypto's, in browsers and Node alike) over a fixed context string followed by the 32
// bytes of manifest_sha256, the SHA-256 of manifest.json in Python's canonical form
// (python-json.ts). The manifest holds the digest of every model file, so a signature that
// verifies vouches for all of them. A trusted key is the PEM public key `splitinfer signing-key`
// writes (KEY.pub); its id is the first 16 hex digits of the SHA-256 of its 32 raw bytes.

import { sha256Hex } from "./digest.js";
import { BundleError, BundleSignatureError } from "./errors.js";
import { dumpsPythonJson, parsePythonJson } from "./python-json.js";

export const SIGNATURE_FILE = "manifest.sig";
const ALGORITHM = "ed25519";
// Prefixed to the digest before signing (protos/signing.py's _CONTEXT): a bundle signature can
// never be taken for one the same key made for anything else.
const CONTEXT = new TextEncoder().encode("splitinfer bundle manifest v1\0");

export interface TrustedKey {
  keyId: string;
  key: CryptoKey;
}

function subtle(): SubtleCrypto {
  if (globalThis.crypto?.subtle === undefined) throw new BundleSignatureError("WebCrypto is not available here (a page over plain http from another host): serve the page over https to verify signatures");
  return globalThis.crypto.subtle;
}

function fromBase64(text: string): Uint8Array {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4 !== 0) throw new Error("not base64");
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

function fromHex(hex: string): Uint8Array {
  return Uint8Array.from(hex.match(/../g) ?? [], (b) => parseInt(b, 16));
}

/** An Ed25519 public key from its PEM text (SubjectPublicKeyInfo, as KEY.pub holds it). */
export async function importTrustedKey(pem: string): Promise<TrustedKey> {
  const body = /-----BEGIN PUBLIC KEY-----([A-Za-z0-9+/=\s]+)-----END PUBLIC KEY-----/.exec(pem);
  if (body === null) throw new BundleSignatureError("trusted key is not a public key in PEM (-----BEGIN PUBLIC KEY-----)");
  let key: CryptoKey;
  try {
    key = await subtle().importKey("spki", fromBase64(body[1].replace(/\s+/g, "")) as Uint8Array<ArrayBuffer>, { name: "Ed25519" }, true, ["verify"]);
  } catch (err) {
    throw new BundleSignatureError(`trusted key is not an Ed25519 public key: ${(err as Error).message}`);
  }
  const raw = new Uint8Array(await subtle().exportKey("raw", key));
  return { keyId: (await sha256Hex(raw)).slice(0, 16), key };
}

export function importTrustedKeys(pems: readonly string[]): Promise<TrustedKey[]> {
  return Promise.all(pems.map((pem, i) => importTrustedKey(pem).catch((err: Error) => Promise.reject(new BundleSignatureError(`trusted key ${i + 1} of ${pems.length}: ${err.message}`)))));
}

/** SHA-256 of manifest.json's text in canonical form: what a signature covers. */
export async function manifestSha256(manifestText: string): Promise<string> {
  let canonical: string;
  try {
    canonical = dumpsPythonJson(parsePythonJson(manifestText), [",", ":"]);
  } catch (err) {
    throw new BundleError(`manifest.json cannot be put in canonical form: ${(err as Error).message}`);
  }
  return sha256Hex(new TextEncoder().encode(canonical));
}

/** Checks `signatureText` (manifest.sig; null when the bundle has none) against `trusted`;
 * returns the key that signed it. Refuses, naming why, a bundle that is unsigned, malformed,
 * signed by another key or changed after signing. */
export async function verifyManifestSignature(manifestText: string, signatureText: string | null, trusted: readonly TrustedKey[]): Promise<TrustedKey> {
  if (signatureText === null) throw new BundleSignatureError(`the bundle is not signed (no ${SIGNATURE_FILE}) and only bundles signed by a trusted key are accepted`);
  const digest = await manifestSha256(manifestText);
  let algorithm: unknown, keyId: unknown, signedDigest: unknown, signature: Uint8Array;
  try {
    const record = JSON.parse(signatureText);
    ({ algorithm, key_id: keyId, manifest_sha256: signedDigest } = record);
    if (typeof record.signature !== "string") throw new Error("signature is not a string");
    signature = fromBase64(record.signature);
  } catch (err) {
    throw new BundleSignatureError(`${SIGNATURE_FILE} is malformed: ${(err as Error).message}`);
  }
  if (algorithm !== ALGORITHM) throw new BundleSignatureError(`${SIGNATURE_FILE} uses algorithm ${JSON.stringify(algorithm)}, not "${ALGORITHM}"`);
  if (signedDigest !== digest) {
    throw new BundleSignatureError(`manifest.json changed after it was signed (signed manifest sha256 ${String(signedDigest).slice(0, 16)}…, now ${digest.slice(0, 16)}…)`);
  }
  const signer = trusted.find((k) => k.keyId === keyId);
  if (signer === undefined) {
    throw new BundleSignatureError(`the bundle is signed by key ${JSON.stringify(keyId)}, which is not a trusted key (trusted: ${trusted.map((k) => k.keyId).join(", ") || "none"})`);
  }
  const message = new Uint8Array([...CONTEXT, ...fromHex(digest)]);
  if (!(await subtle().verify("Ed25519", signer.key, signature as Uint8Array<ArrayBuffer>, message))) {
    throw new BundleSignatureError(`the signature in ${SIGNATURE_FILE} does not verify with key ${signer.keyId}`);
  }
  return signer;
}

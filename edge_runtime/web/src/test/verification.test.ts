// The SDK verifies a bundle as the contract says (docs/contract.md §1), in Node: every case of
// verification-cases.ts on the contract's manifest vectors, and a signed bundle directory loaded
// with its key (as connect(dir, ..., { trustKeys }) does), refused with another.

import assert from "node:assert/strict";
import { cpSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { BundleSignatureError, loadBundleDir } from "../node.js";
import { ROOT } from "./fixture.js";
import { type ManifestVectors, verificationCases } from "./verification-cases.js";

const VECTORS = process.env.SPLITINFER_CONFORMANCE ?? join(ROOT, "conformance", "vectors");
const vectors: ManifestVectors = JSON.parse(readFileSync(join(VECTORS, "manifests.json"), "utf8"));
const head = new Uint8Array(readFileSync(join(VECTORS, "bundle", "head.onnx")));

describe("bundle verification, the manifest vectors", () => {
  for (const c of verificationCases(vectors, head)) it(c.name, () => c.run());
});

describe("bundle verification, a bundle directory", () => {
  const signed = mkdtempSync(join(tmpdir(), "splitinfer-signed-"));
  cpSync(join(VECTORS, "bundle"), signed, { recursive: true });
  writeFileSync(join(signed, "manifest.sig"), vectors.manifests[0].signature);

  it("loads when signed by a trusted key, and unsigned when none is given", async () => {
    const bundle = await loadBundleDir(signed, [vectors.keys.signer.public_pem]);
    assert.equal(bundle.manifest.bundleHash, vectors.manifests[0].bundle_hash);
    await loadBundleDir(join(VECTORS, "bundle"));
  });

  it("is refused when only another key is trusted, or when it is not signed", async () => {
    await assert.rejects(loadBundleDir(signed, [vectors.keys.stranger.public_pem]), (err: Error) => err instanceof BundleSignatureError && /not a trusted key/.test(err.message));
    await assert.rejects(loadBundleDir(join(VECTORS, "bundle"), [vectors.keys.signer.public_pem]), /is not signed \(no manifest\.sig\)/);
  });
});

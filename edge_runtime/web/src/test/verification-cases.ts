// The SDK's verification of a bundle against the contract's manifest vectors
// (conformance/vectors/manifests.json, docs/contract.md §1): written once, run in Node
// (verification.test.ts) and in Chromium (browser-test/verification.ts), so both platforms'
// WebCrypto and the same code are held to the same cases. Each case throws when the SDK is wrong.

import { type BundleReader, BundleError, BundleSignatureError, bundleHashText, computeBundleHash, loadBundle, parseManifest } from "../bundle.js";
import { dumpsPythonJson, parsePythonJson } from "../python-json.js";
import { importTrustedKey, importTrustedKeys, manifestSha256 } from "../signing.js";

export interface ManifestVectors {
  keys: Record<string, { public_pem: string }>;
  manifests: { name: string; manifest: string; bundle_hash: string; bundle_hash_text: string | null; canonical: string; manifest_sha256: string; signature: string }[];
  tampered: { field: string; manifest: string; refused_by_hash: boolean; rehashed: string }[];
  bad_signatures: { name: string; why: string; signature: string }[];
}

export interface Case {
  name: string;
  run(): Promise<void>;
}

function check(condition: boolean, message: string): void {
  if (!condition) throw new Error(message);
}

async function refused(load: Promise<unknown>, kind: typeof BundleError, pattern: RegExp, what: string): Promise<void> {
  try {
    await load;
  } catch (err) {
    check(err instanceof kind, `${what}: refused with ${(err as Error).name} (${(err as Error).message}), not a ${kind.name}`);
    check(pattern.test((err as Error).message), `${what}: refused with "${(err as Error).message}", which does not match ${pattern}`);
    return;
  }
  throw new Error(`${what}: loaded, not refused`);
}

/** A bundle of these texts (manifest.json, manifest.sig when given) and the vectors' head. */
function reader(manifest: string, head: Uint8Array, signature: string | null): { read: BundleReader; readSignature: () => Promise<Uint8Array | null> } {
  const text = new TextEncoder();
  return {
    read: async (name) => {
      if (name === "manifest.json") return text.encode(manifest);
      if (name === "head.onnx") return head;
      throw new Error(`no file ${name}`);
    },
    readSignature: async () => (signature === null ? null : text.encode(signature)),
  };
}

export function verificationCases(vectors: ManifestVectors, head: Uint8Array): Case[] {
  const signerKey = () => importTrustedKeys([vectors.keys.signer.public_pem]);
  const load = (manifest: string, signature: string | null, trusted: boolean) =>
    (trusted ? signerKey() : Promise.resolve([])).then((trustedKeys) => loadBundle(reader(manifest, head, signature).read, { trustedKeys, readSignature: reader(manifest, head, signature).readSignature }));
  const exported = vectors.manifests[0];
  const cases: Case[] = [];
  for (const m of vectors.manifests) {
    cases.push({
      name: `manifest ${m.name}: the bundle_hash, its text, the canonical form and its digest are the reference's`,
      async run() {
        const manifest = parseManifest(JSON.parse(m.manifest));
        if (m.bundle_hash_text !== null) check(bundleHashText(manifest) === m.bundle_hash_text, `bundle_hash_text ${bundleHashText(manifest)}`);
        check((await computeBundleHash(manifest)) === m.bundle_hash, "bundle_hash");
        const canonical = dumpsPythonJson(parsePythonJson(m.manifest), [",", ":"]);
        check(canonical === m.canonical, `canonical form ${canonical}`);
        check((await manifestSha256(m.manifest)) === m.manifest_sha256, "manifest_sha256");
      },
    });
    cases.push({
      name: `manifest ${m.name}: loads, unsigned and with its signature checked`,
      async run() {
        const plain = await load(m.manifest, null, false);
        check(plain.manifest.bundleHash === m.bundle_hash && plain.head !== null, "loaded without keys");
        const signed = await load(m.manifest, m.signature, true);
        check(signed.manifest.bundleHash === m.bundle_hash, "loaded with the signer's key");
      },
    });
  }
  for (const t of vectors.tampered) {
    cases.push({
      name: `an edited ${t.field}: ${t.refused_by_hash ? "refused by its bundle_hash" : "not hashed, so loaded"}; refused by the signature, rehashed or not`,
      async run() {
        if (t.refused_by_hash) await refused(load(t.manifest, null, false), BundleError, /manifest bundle_hash .* does not match its contents/, `edited ${t.field}`);
        else check((await load(t.manifest, null, false)).manifest.bundleHash === exported.bundle_hash, `edited ${t.field} loads`);
        for (const [what, text] of [["edited", t.manifest], ["edited and rehashed", t.rehashed]]) {
          await refused(load(text, exported.signature, true), BundleSignatureError, /manifest\.json changed after it was signed/, `${what} ${t.field}, signed`);
        }
      },
    });
  }
  for (const bad of vectors.bad_signatures) {
    cases.push({
      name: `a signature that ${bad.why} (${bad.name}) is refused`,
      async run() {
        await refused(load(exported.manifest, bad.signature, true), BundleSignatureError, /./, bad.name);
      },
    });
  }
  cases.push({
    name: "an unsigned bundle is refused when keys are trusted, and a key that is not Ed25519 is refused",
    async run() {
      await refused(load(exported.manifest, null, true), BundleSignatureError, /is not signed \(no manifest\.sig\)/, "unsigned");
      const ecdsa = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"]);
      const spki = new Uint8Array(await crypto.subtle.exportKey("spki", ecdsa.publicKey));
      const pem = `-----BEGIN PUBLIC KEY-----\n${btoa(String.fromCharCode(...spki))}\n-----END PUBLIC KEY-----\n`;
      await refused(importTrustedKey(pem), BundleSignatureError, /not an Ed25519 public key/, "an ECDSA key");
      await refused(importTrustedKey("ssh-ed25519 AAAA"), BundleSignatureError, /not a public key in PEM/, "an ssh key");
    },
  });
  cases.push({
    name: "a head whose bytes are not the manifest's is refused after the manifest verifies",
    async run() {
      const edited = head.slice();
      edited[edited.length - 1] ^= 1;
      const { read, readSignature } = reader(exported.manifest, edited, exported.signature);
      await refused(loadBundle(read, { trustedKeys: await signerKey(), readSignature }), BundleError, /bundle file head\.onnx: sha256 .* does not match/, "edited head");
    },
  });
  return cases;
}

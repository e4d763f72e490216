// The SDK's bundle verification in the browser (tests/web/test_verification_browser.py opens this
// page in headless Chromium): the signed bundle `?bundle=HASH` fetched from the server's web port
// with the page's trusted key (`trusted.pem`, beside the page) and with another (`stranger.pem`),
// then every case of src/test/verification-cases.ts on the vectors beside the page
// (`manifests.json`, `head.onnx`); and with `?multi=HASH` (a cut of a served multi-cut bundle),
// that bundle fetched and verified, and each of its cuts with a tail run on `multi-input.f32` and
// answered over gRPC-Web with `multi-expected.f32`'s logits. Writes {"cases": [{name, error?}]}
// into #result.

import { BundleSignatureError, connect, cutBundle, fetchBundle, fetchMultiCutBundle } from "../src/browser.js";
import { type ManifestVectors, verificationCases } from "../src/test/verification-cases.js";

const text = async (name: string) => {
  const response = await fetch(name);
  if (!response.ok) throw new Error(`GET ${name}: HTTP ${response.status}`);
  return response.text();
};

async function main(): Promise<{ name: string; error?: string }[]> {
  const hash = new URLSearchParams(location.search).get("bundle") ?? "";
  const [trusted, stranger] = [await text("trusted.pem"), await text("stranger.pem")];
  const vectors: ManifestVectors = JSON.parse(await text("manifests.json"));
  const head = new Uint8Array(await (await fetch("head.onnx")).arrayBuffer());
  const cases = [
    {
      name: "a signed bundle fetched from the web port loads with its signer's key",
      async run() {
        const bundle = await fetchBundle(location.origin, hash, undefined, [trusted]);
        if (bundle.manifest.bundleHash !== hash || bundle.head === null) throw new Error(`loaded ${bundle.manifest.bundleHash}`);
      },
    },
    {
      name: "the same bundle is refused when only another key is trusted",
      async run() {
        try {
          await fetchBundle(location.origin, hash, undefined, [stranger]);
        } catch (err) {
          if (err instanceof BundleSignatureError && /not a trusted key/.test(err.message)) return;
          throw err;
        }
        throw new Error("loaded, not refused");
      },
    },
    ...verificationCases(vectors, head),
  ];
  const multi = new URLSearchParams(location.search).get("multi");
  if (multi !== null) {
    cases.push({
      name: "a multi-cut bundle fetched from the web port: each cut with a tail answers with the unsplit model's logits",
      async run() {
        const bundle = await fetchMultiCutBundle(location.origin, multi);
        const f32 = async (name: string) => new Float32Array(await (await fetch(name)).arrayBuffer());
        const [input, expected] = [await f32("multi-input.f32"), await f32("multi-expected.f32")];
        const served = bundle.cuts.filter((c) => c.manifest.tailSha256);
        if (served.length < 4) throw new Error(`only ${served.length} cuts have a tail`);
        for (const { manifest } of served) {
          const client = await connect(location.origin, cutBundle(bundle, manifest.cutName), { protocol: "grpc-web", codec: "fp32" });
          const got = (await client.infer(input, manifest.inputs[0].shape)).outputs.logits.data as Float32Array;
          const diff = Math.max(...Array.from(expected, (v, i) => Math.abs(v - got[i])));
          if (!(diff <= 1e-5)) throw new Error(`cut ${manifest.cutName}: logits differ by ${diff}`);
        }
      },
    });
  }
  const results = [];
  for (const c of cases) {
    try {
      await c.run();
      results.push({ name: c.name });
    } catch (err) {
      results.push({ name: c.name, error: String((err as Error).message ?? err) });
    }
  }
  return results;
}

main().then(
  (cases) => (document.getElementById("result")!.textContent = JSON.stringify({ cases })),
  (err) => (document.getElementById("result")!.textContent = JSON.stringify({ error: String(err) })),
);

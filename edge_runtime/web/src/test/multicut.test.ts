// A multi-cut bundle in the SDK (tests/multicut.py's, built and served by fixture_server.py): it
// loads verified, each cut with a tail runs its segments and is answered by the server with the
// unsplit model's logits, the decision table chooses the cut and codec Python's would, and an
// edited table or segment is refused.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { BundleError, bestChoice, connect, cutBundle, loadMultiCutBundle, loadMultiCutBundleDir, loadBundleDir } from "../node.js";
import { type Fixture, f32, maxAbsDiff, startFixture } from "./fixture.js";

let fx: Fixture;
before(async () => {
  fx = await startFixture();
});
after(() => fx?.stop());

describe("a multi-cut bundle", () => {
  it("loads verified, and every cut with a tail is answered with the unsplit model's logits", async () => {
    const bundle = await loadMultiCutBundleDir(fx.multi);
    const input = f32(join(fx.work, "multi-input.f32"));
    const expected = f32(join(fx.work, "multi-expected.f32"));
    const served = bundle.cuts.filter((c) => c.manifest.tailSha256);
    assert.ok(served.length >= 4, served.map((c) => c.manifest.cutName).join(", "));
    for (const { manifest } of served) {
      const client = await connect(fx.multi, fx.multiWeb, { cut: manifest.cutName, codec: "fp32" });
      const result = await client.infer(input, [1, 8, 32, 32]);
      assert.deepEqual(result.cut.map((t) => t.name), manifest.cut.map((t) => t.name));
      assert.ok(maxAbsDiff(result.outputs.logits.data as Float32Array, expected) <= 1e-5, manifest.cutName);
    }
  });

  it("chooses by its decision table: the early cut in fp16 on a fast uplink, the pooled one on a slow", async () => {
    const bundle = await loadMultiCutBundleDir(fx.multi);
    const fast = bestChoice(bundle, 100e6, 10);
    assert.deepEqual([fast.cut, fast.codec], ["a", "fp16"]);
    assert.equal(bestChoice(bundle, 100e3, 10).cut, "pooled");
    const client = await connect(fx.multi, fx.multiWeb, { network: { bandwidthBps: 100e3, rttMs: 10 } });
    const result = await client.infer(f32(join(fx.work, "multi-input.f32")), [1, 8, 32, 32]);
    assert.deepEqual(result.cut.map((t) => t.name), ["pooled"]);
    assert.ok(maxAbsDiff(result.outputs.logits.data as Float32Array, f32(join(fx.work, "multi-expected.f32"))) <= 1e-5);
  });

  it("refuses a cut it does not carry, the all-on-device cut, and connect without a choice", async () => {
    const bundle = await loadMultiCutBundleDir(fx.multi);
    assert.throws(() => cutBundle(bundle, "nowhere"), /has no cut "nowhere"/);
    const local = bundle.cuts.find((c) => !c.manifest.tailSha256);
    if (local) assert.throws(() => cutBundle(bundle, local.manifest.cutName), /runs the whole model on the device/);
    await assert.rejects(connect(fx.multi, fx.multiWeb), /is a multi-cut bundle: choose its cut/);
    await assert.rejects(loadBundleDir(fx.multi), /load it with loadMultiCutBundle/);
  });

  it("refuses an edited decision table, an edited cut manifest and an edited segment", async () => {
    const text = readFileSync(join(fx.multi, "manifest.json"), "utf8");
    const data = JSON.parse(text);
    const read = (manifest: string, edit?: string) => async (name: string) => {
      if (name === "manifest.json") return new TextEncoder().encode(manifest);
      const bytes = new Uint8Array(readFileSync(join(fx.multi, name)));
      if (name === edit) bytes[bytes.length - 1] ^= 1;
      return bytes;
    };
    await loadMultiCutBundle(read(text));
    const table = structuredClone(data);
    table.decisions.entries[0].head_ms += 1;
    await assert.rejects(loadMultiCutBundle(read(JSON.stringify(table))), (err: Error) => err instanceof BundleError && /multi-cut manifest bundle_hash .* does not match/.test(err.message));
    const cut = structuredClone(data);
    cut.cuts[1].manifest.labels = ["edited"];
    await assert.rejects(loadMultiCutBundle(read(JSON.stringify(cut))), /manifest bundle_hash .* does not match/);
    await assert.rejects(loadMultiCutBundle(read(text, data.segments[0].file)), /sha256 .* does not match/);
  });
});

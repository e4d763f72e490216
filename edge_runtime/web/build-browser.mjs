// The browser build: the SDK and the demo page bundled by esbuild into dist/demo, with the wasm
// files they load beside them (onnxruntime-web's and zstd's), so the server's web port can serve
// the page as static files; and the pages the tests and benches open (browser-test/) into
// dist/browser-test.
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";

const out = "dist/demo";
mkdirSync(out, { recursive: true });
await build({
  entryPoints: ["demo/demo.ts"],
  bundle: true,
  format: "esm",
  target: "es2022",
  outfile: `${out}/demo.js`,
  logLevel: "warning",
});
copyFileSync("node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.wasm", `${out}/ort-wasm-simd-threaded.wasm`);
copyFileSync("node_modules/@bokuweb/zstd-wasm/dist/web/zstd.wasm", `${out}/zstd.wasm`);
for (const file of ["index.html", "demo.css"]) copyFileSync(`demo/${file}`, `${out}/${file}`);

const tests = "dist/browser-test";
mkdirSync(tests, { recursive: true });
for (const [entry, out] of [["verification", "verification"], ["heads-page", "heads"]]) {
  await build({ entryPoints: [`browser-test/${entry}.ts`], bundle: true, format: "esm", target: "es2022", outfile: `${tests}/${out}.js`, logLevel: "warning" });
}
// The bench's Node side, bundled too (tsc builds src/ only); its packages stay imports.
await build({ entryPoints: ["browser-test/heads-node.ts"], bundle: true, platform: "node", format: "esm", target: "node20", packages: "external", outfile: `${tests}/heads-node.mjs`, logLevel: "warning" });
for (const file of ["index.html", "heads.html"]) copyFileSync(`browser-test/${file}`, `${tests}/${file}`);
copyFileSync("node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.wasm", `${tests}/ort-wasm-simd-threaded.wasm`);
copyFileSync("node_modules/@bokuweb/zstd-wasm/dist/web/zstd.wasm", `${tests}/zstd.wasm`);

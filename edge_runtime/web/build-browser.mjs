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
for (const page of ["verification"]) {
  await build({ entryPoints: [`browser-test/${page}.ts`], bundle: true, format: "esm", target: "es2022", outfile: `${tests}/${page}.js`, logLevel: "warning" });
}
copyFileSync("browser-test/index.html", `${tests}/index.html`);

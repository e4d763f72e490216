// The platform-neutral core of the SDK; node.ts and browser.ts wire it to their ONNX Runtime and
// transports.
export * from "./bundle.js";
export * from "./client.js";
export * from "./codec.js";
export * from "./head.js";
export * from "./multicut.js";
export * from "./preprocess.js";
export * from "./python-json.js";
export * from "./signing.js";
export { initZstd } from "./zstd.js";
export * as wire from "./gen/splitinfer/v1/inference_pb.js";

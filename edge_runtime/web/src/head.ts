// The head, run by ONNX Runtime through onnxruntime-common's interface: onnxruntime-web (WASM)
// in browsers and onnxruntime-node in Node hand the same InferenceSession and Tensor classes.

import type { InferenceSession, Tensor } from "onnxruntime-common";
import type { Manifest } from "./bundle.js";

/** What an ONNX Runtime package exports: onnxruntime-web's or onnxruntime-node's module. */
export interface OrtModule {
  InferenceSession: { create(model: Uint8Array, options?: InferenceSession.SessionOptions): Promise<InferenceSession> };
  Tensor: new (type: "float32", data: Float32Array, dims: readonly number[]) => Tensor;
}

export interface CutTensor {
  name: string;
  data: Float32Array;
  shape: number[];
}

export class Head {
  private constructor(
    private readonly ort: OrtModule,
    private readonly session: InferenceSession | null,
    private readonly manifest: Manifest,
  ) {}

  static async load(ort: OrtModule, manifest: Manifest, model: Uint8Array | null, options?: InferenceSession.SessionOptions): Promise<Head> {
    const session = model === null ? null : await ort.InferenceSession.create(model, options);
    return new Head(ort, session, manifest);
  }

  /** The model's input (1 tensor) → the tensors of the cut, in the manifest's order. */
  async run(input: Float32Array, dims: number[]): Promise<CutTensor[]> {
    const [spec] = this.manifest.inputs;
    if (this.session === null) return [{ name: this.manifest.cut[0].name, data: input, shape: dims }];
    const feeds = { [spec.name]: new this.ort.Tensor("float32", input, dims) };
    const outputs = await this.session.run(feeds, this.manifest.cut.map((c) => c.name));
    return this.manifest.cut.map((c) => {
      const t = outputs[c.name];
      if (t.type !== "float32") throw new Error(`cut tensor ${c.name} is ${t.type}; this SDK sends float32 cuts`);
      return { name: c.name, data: t.data as Float32Array, shape: [...t.dims] };
    });
  }
}

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

/** One ONNX Runtime session of the head: the whole head, or one segment of a multi-cut bundle's. */
interface Stage {
  session: InferenceSession;
  inputs: string[];
  outputs: string[];
}

export class Head {
  private constructor(
    private readonly ort: OrtModule,
    private readonly stages: Stage[],
    private readonly manifest: Manifest,
  ) {}

  static async load(ort: OrtModule, manifest: Manifest, model: Uint8Array | null, options?: InferenceSession.SessionOptions): Promise<Head> {
    if (model === null) return new Head(ort, [], manifest);
    const session = await ort.InferenceSession.create(model, options);
    return new Head(ort, [{ session, inputs: manifest.inputs.map((i) => i.name), outputs: manifest.cut.map((c) => c.name) }], manifest);
  }

  /** A multi-cut bundle's cut: its segments run in order, each fed from the model's input and the
   * segments before it. */
  static async segmented(ort: OrtModule, manifest: Manifest, segments: readonly { inputs: string[]; outputs: string[]; model: Uint8Array }[], options?: InferenceSession.SessionOptions): Promise<Head> {
    const stages = [];
    for (const s of segments) stages.push({ session: await ort.InferenceSession.create(s.model, options), inputs: s.inputs, outputs: s.outputs });
    return new Head(ort, stages, manifest);
  }

  /** The model's input (1 tensor) → the tensors of the cut, in the manifest's order. */
  async run(input: Float32Array, dims: number[]): Promise<CutTensor[]> {
    const [spec] = this.manifest.inputs;
    if (this.stages.length === 0) return [{ name: this.manifest.cut[0].name, data: input, shape: dims }];
    const tensors: Record<string, Tensor> = { [spec.name]: new this.ort.Tensor("float32", input, dims) };
    for (const stage of this.stages) {
      const feeds = Object.fromEntries(stage.inputs.map((name) => [name, tensors[name]]));
      Object.assign(tensors, await stage.session.run(feeds, stage.outputs));
    }
    return this.manifest.cut.map((c) => {
      const t = tensors[c.name];
      if (t === undefined) throw new Error(`the head computes no tensor ${c.name}`);
      if (t.type !== "float32") throw new Error(`cut tensor ${c.name} is ${t.type}; this SDK sends float32 cuts`);
      return { name: c.name, data: t.data as Float32Array, shape: [...t.dims] };
    });
  }
}

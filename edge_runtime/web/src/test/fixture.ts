// The Python side of these tests: tests/web/fixture_server.py, a real splitinfer server on
// loopback and what Python makes of the same inputs. Started once per test file.

import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";

export interface Fixture {
  codecs: string[];
  images: { file: string; tensor: string; width: number; height: number; channels: number }[];
  resizes: { n: number; width: number; height: number; new_width: number; new_height: number }[];
  preprocess: Record<string, unknown>;
  bundle: string;
  work: string;
  web: string;
  grpc: string;
  guarded: string;
  token: string;
  secure: string;
  secureGrpc: string;
  certs: { ca: string; cert: string; key: string };
  crowded: string;
  crowdedBundle: string;
  multi: string;
  multiWeb: string;
  stop(): void;
}

export const ROOT = resolve(process.cwd(), "../..");

export function startFixture(): Promise<Fixture> {
  const python = process.env.SPLITINFER_PYTHON ?? resolve(ROOT, ".venv/bin/python");
  const work = mkdtempSync(join(tmpdir(), "splitinfer-web-"));
  const child: ChildProcess = spawn(python, ["tests/web/fixture_server.py", work], {
    cwd: ROOT,
    env: { ...process.env, PYTHONPATH: ROOT },
    stdio: ["pipe", "pipe", "inherit"],
  });
  return new Promise((resolvePromise, reject) => {
    child.once("error", reject);
    child.once("exit", (code) => reject(new Error(`fixture server exited ${code} before it was ready`)));
    createInterface({ input: child.stdout! }).once("line", (line) => {
      const info = JSON.parse(line);
      resolvePromise({ ...info, secureGrpc: info.secure_grpc, crowdedBundle: info.crowded_bundle, multiWeb: info.multi_web, stop: () => child.stdin!.end() });
    });
  });
}

export function f32(path: string): Float32Array {
  const bytes = readFileSync(path);
  return new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Infinity;
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
  return d;
}

// JSON as Python's json module reads and writes it: a manifest's bundle_hash is the SHA-256 of
// `json.dumps(covered, sort_keys=True)` and manifest.sig signs the SHA-256 of the manifest as
// `json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"), ensure_ascii=True)`
// (docs/contract.md §1), so verifying either means writing those exact bytes. Written here, not
// taken from a library: JSON.parse forgets whether a number was written `1` or `1.0` (Python keeps
// an int and a float apart and writes them differently), no parser in Node 20 exposes a number's
// source text, and JSON.stringify writes non-ASCII as is and numbers in JavaScript's form
// (`1e-7`, `0.00001`, `1`) where Python writes `1e-07`, `1e-05`, `1.0`.

/** A JSON value as Python's json.loads makes it: an integer literal is a bigint (Python's int, of
 * any size), any other number a number (Python's float), an object has no prototype (so no key is
 * special) and keeps the last of repeated keys, as Python's dict does. */
export type PyValue = null | boolean | string | bigint | number | PyValue[] | { [key: string]: PyValue };

const NUMBER = /-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?/y;
const STRING = /"(?:[^"\\\u0000-\u001f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*"/y;
const SPACE = /[ \t\n\r]*/y;

/** `text` parsed as Python's json.loads does (NaN and Infinity, which it also reads, refused:
 * a manifest with them cannot be hashed or signed). Throws SyntaxError naming the offset. */
export function parsePythonJson(text: string): PyValue {
  let at = 0;
  const fail = (what: string): never => {
    throw new SyntaxError(`${what} at character ${at}`);
  };
  const skip = () => {
    SPACE.lastIndex = at;
    SPACE.exec(text);
    at = SPACE.lastIndex;
  };
  const token = (pattern: RegExp): RegExpExecArray | null => {
    pattern.lastIndex = at;
    const found = pattern.exec(text);
    if (found !== null) at = pattern.lastIndex;
    return found;
  };
  const value = (): PyValue => {
    skip();
    const c = text[at];
    if (c === "{") {
      at++;
      const object: { [key: string]: PyValue } = Object.create(null);
      skip();
      if (text[at] === "}") return at++, object;
      for (;;) {
        skip();
        const key = token(STRING) ?? fail("expected a string key");
        skip();
        if (text[at++] !== ":") fail("expected ':'");
        object[JSON.parse(key[0]) as string] = value();
        skip();
        const next = text[at++];
        if (next === "}") return object;
        if (next !== ",") fail("expected ',' or '}'");
      }
    }
    if (c === "[") {
      at++;
      const array: PyValue[] = [];
      skip();
      if (text[at] === "]") return at++, array;
      for (;;) {
        array.push(value());
        skip();
        const next = text[at++];
        if (next === "]") return array;
        if (next !== ",") fail("expected ',' or ']'");
      }
    }
    if (c === '"') return JSON.parse((token(STRING) ?? fail("malformed string"))[0]) as string;
    for (const [word, literal] of [["true", true], ["false", false], ["null", null]] as const) {
      if (text.startsWith(word, at)) return (at += word.length), literal;
    }
    const number = token(NUMBER) ?? fail("expected a JSON value");
    if (number[1] === undefined && number[2] === undefined) return BigInt(number[0]);
    const float = Number(number[0]);
    if (!Number.isFinite(float)) fail(`${number[0]} is out of a double's range`);
    return float;
  };
  const result = value();
  skip();
  if (at !== text.length) fail("extra data after the JSON value");
  return result;
}

/** What `json.dumps(value, sort_keys=True, ensure_ascii=True, allow_nan=False, separators=...)`
 * writes; the default separators are json.dumps's own. */
export function dumpsPythonJson(value: PyValue, separators: [string, string] = [", ", ": "]): string {
  const [item, key] = separators;
  const write = (v: PyValue): string => {
    if (v === null) return "null";
    if (v === true) return "true";
    if (v === false) return "false";
    if (typeof v === "string") return pythonString(v);
    if (typeof v === "bigint") return v.toString();
    if (typeof v === "number") return pythonFloat(v);
    if (Array.isArray(v)) return `[${v.map(write).join(item)}]`;
    const keys = Object.keys(v).sort(byCodePoint);
    return `{${keys.map((k) => pythonString(k) + key + write(v[k])).join(item)}}`;
  };
  return write(value);
}

/** Python orders strings by code point; JavaScript's sort by UTF-16 code unit, which differs for
 * characters beyond U+FFFF against those from U+E000. */
function byCodePoint(a: string, b: string): number {
  const x = Array.from(a, (c) => c.codePointAt(0)!);
  const y = Array.from(b, (c) => c.codePointAt(0)!);
  for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i] - y[i];
  return x.length - y.length;
}

const SHORT_ESCAPES: Record<string, string> = { '"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f" };

/** json.dumps's string with ensure_ascii: printable ASCII as is, everything else `\uXXXX` per
 * UTF-16 code unit (lowercase hex; a character beyond U+FFFF as its surrogate pair). */
function pythonString(s: string): string {
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    const code = s.charCodeAt(i);
    if (c in SHORT_ESCAPES) out += SHORT_ESCAPES[c];
    else if (code >= 0x20 && code < 0x7f) out += c;
    else out += `\\u${code.toString(16).padStart(4, "0")}`;
  }
  return out + '"';
}

/** Python's repr of a float: the shortest digits that read back as the same double (what
 * JavaScript's toExponential() gives too), positioned as Python does: fixed notation with at least
 * one decimal for a decimal exponent from -4 to 15, else `d.ddde±XX` (two exponent digits at least). */
export function pythonFloat(x: number): string {
  if (!Number.isFinite(x)) throw new RangeError(`${x} is not a finite number: Python's json.dumps(allow_nan=False) refuses it`);
  if (x === 0) return Object.is(x, -0) ? "-0.0" : "0.0";
  const [mantissa, exponentText] = Math.abs(x).toExponential().split("e");
  const digits = mantissa.replace(".", "");
  const exponent = Number(exponentText);
  const sign = x < 0 ? "-" : "";
  if (exponent < -4 || exponent >= 16) {
    const fraction = digits.length > 1 ? `.${digits.slice(1)}` : "";
    const power = `${exponent < 0 ? "-" : "+"}${String(Math.abs(exponent)).padStart(2, "0")}`;
    return `${sign}${digits[0]}${fraction}e${power}`;
  }
  if (exponent < 0) return `${sign}0.${"0".repeat(-exponent - 1)}${digits}`;
  const whole = digits.slice(0, exponent + 1).padEnd(exponent + 1, "0");
  return `${sign}${whole}.${digits.slice(exponent + 1) || "0"}`;
}

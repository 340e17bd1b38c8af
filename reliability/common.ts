/**
 * What every reliability technique shares: self-describing payloads, a seeded PRNG, the list of
 * writers (the library's APIs, the compiled CLI, the deliberately broken fixtures), how to start
 * one of them in a child process, and the one results table that `run.ts` prints.
 */
import { type SpawnSyncReturns, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import { join } from "node:path";
import { BUN, ROOT } from "../test/helpers.ts";

export const HERE = join(ROOT, "reliability");
export const CHILD = join(HERE, "child.ts");

// ---------------------------------------------------------------------------------------------
// Payloads. One ASCII header line says which version this is, how long the body is and what
// its checksum is, so a state that is truncated, zero-filled or spliced from two versions is
// recognised from the bytes alone. The body is ASCII too, so the text APIs write it unchanged.

const MAGIC = "AWRP";

export function makePayload(version: number, bodyLength: number): Buffer {
  const body = Buffer.alloc(bodyLength);
  const random = prng(version * 7919 + bodyLength);
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  for (let i = 0; i < bodyLength; i++) body[i] = alphabet.charCodeAt(Math.floor(random() * alphabet.length));
  const header = `${MAGIC} v=${version} n=${bodyLength} sha=${sha(body)}\n`;
  return Buffer.concat([Buffer.from(header, "latin1"), body]);
}

export type Verdict = { ok: true; version: number } | { ok: false; why: string };

/** Which whole version these bytes are, or why they are not one. */
export function verifyPayload(bytes: Uint8Array): Verdict {
  const buffer = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (buffer.length === 0) return { ok: false, why: "empty file" };
  if (buffer.every((byte) => byte === 0)) return { ok: false, why: `all ${buffer.length} bytes are zero` };
  const newline = buffer.indexOf(10);
  const header = buffer.toString("latin1", 0, newline < 0 ? Math.min(buffer.length, 80) : newline);
  const match = /^AWRP v=(\d+) n=(\d+) sha=([0-9a-f]{16})$/.exec(header);
  if (newline < 0 || !match)
    return { ok: false, why: `no payload header (starts ${JSON.stringify(header.slice(0, 24))})` };
  const body = buffer.subarray(newline + 1);
  const want = Number(match[2]);
  if (body.length !== want) return { ok: false, why: `body is ${body.length} bytes, header says ${want}` };
  if (sha(body) !== match[3]) return { ok: false, why: "checksum mismatch (torn or zero-filled inside)" };
  return { ok: true, version: Number(match[1]) };
}

function sha(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex").slice(0, 16);
}

/** mulberry32: small, fast, and the same sequence for the same seed on every machine. */
export function prng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

export function hashSeed(...parts: (string | number)[]): number {
  return createHash("sha256").update(parts.join("\0")).digest().readUInt32LE(0);
}

// ---------------------------------------------------------------------------------------------
// Writers: who performs the write under test.

export const APIS = ["sync-bytes", "sync-text", "async-bytes", "async-text", "stream", "cli"] as const;
export type Api = (typeof APIS)[number];

/** Deliberately broken writers (reliability/broken/*.ts), each with one classic mistake. */
export const BROKEN = [
  "no-fsync-temp",
  "no-dir-fsync",
  "fsync-after-rename",
  "in-place-trunc",
  "single-write",
  "leaks-temp",
] as const;
export type Broken = (typeof BROKEN)[number];

/** Batches replace two files: TARGET from PAYLOAD_FILE and TARGET2 from PAYLOAD_FILE.second. */
export const BATCHES = ["batch", "batch-async"] as const;
export type Batch = (typeof BATCHES)[number];

export type Writer = Api | Batch | `broken:${Broken}`;

export function isBatch(writer: Writer): writer is Batch {
  return (BATCHES as readonly string[]).includes(writer);
}

export function secondPayload(payloadFile: string): string {
  return `${payloadFile}.second`;
}

export function isBroken(writer: Writer): writer is `broken:${Broken}` {
  return writer.startsWith("broken:");
}

/** The two temp protocols of the library; broken writers ignore this. */
export type TempKind = "anonymous" | "named";

export function tempEnv(kind: TempKind): Record<string, string> {
  return kind === "named" ? { ATOMIC_WRITE_TMPFILE: "0" } : {};
}

let cliBinary: string | undefined;

/** The compiled CLI, built once per run into a private directory. */
export function cli(workDir: string): string {
  if (cliBinary === undefined) {
    const out = join(workDir, "atomic-write");
    // Built from inside the scratch directory: bun build leaves its own temp files in the cwd.
    const built = spawnSync(BUN, ["build", "--compile", join(ROOT, "cli.ts"), "--outfile", out], {
      cwd: workDir,
      encoding: "utf8",
    });
    if (built.status !== 0) throw new Error(`bun build --compile cli.ts failed: ${built.stderr}`);
    cliBinary = out;
  }
  return cliBinary;
}

export interface Command {
  argv: string[];
  input?: Buffer;
  env: Record<string, string>;
}

/** How to start `writer` writing `payloadFile` to `target`. */
export function writerCommand(
  writer: Writer,
  target: string,
  payloadFile: string,
  kind: TempKind,
  workDir: string,
): Command {
  const env = { ...(process.env as Record<string, string>), ...tempEnv(kind) };
  // A real pipe with a separate producer, so the CLI gets its input in pipe-sized pieces.
  if (writer === "cli") return { argv: ["sh", "-c", 'cat "$0" | "$1" "$2"', payloadFile, cli(workDir), target], env };
  return { argv: [BUN, CHILD, writer, target, payloadFile], env };
}

export interface Outcome {
  ok: boolean;
  code?: string;
  message?: string;
  published?: boolean;
  /** A failed batch's paths already replaced. */
  renamed?: string[];
  /** The CLI's exit status, or the child's. */
  status: number | null;
  stderr: string;
}

/** Reads what a writer reported: the child's JSON line, or the CLI's exit status and stderr. */
export function outcomeOf(
  writer: Writer,
  raw: { status: number | null; stdout: string | Buffer | null; stderr: string | Buffer | null },
): Outcome {
  const stdout = String(raw.stdout ?? "");
  const stderr = String(raw.stderr ?? "");
  if (writer === "cli") return { ok: raw.status === 0, status: raw.status, stderr, published: raw.status === 3 };
  const line = stdout.trim().split("\n").pop() ?? "";
  try {
    return { ...(JSON.parse(line) as Omit<Outcome, "status" | "stderr">), status: raw.status, stderr };
  } catch {
    return {
      ok: false,
      code: "NO-RESULT",
      message: `child printed no result: ${stderr.trim()}`,
      status: raw.status,
      stderr,
    };
  }
}

export function spawnCommand(command: Command, prefix: string[] = [], timeoutMs = 60_000): SpawnSyncReturns<string> {
  const argv = [...prefix, ...command.argv];
  return spawnSync(argv[0] as string, argv.slice(1), {
    input: command.input,
    env: command.env,
    encoding: "utf8",
    timeout: timeoutMs,
    maxBuffer: 64 * 1024 * 1024,
  });
}

// ---------------------------------------------------------------------------------------------
// Experiment directories: one fresh directory per write, so nothing else is in it.

let counter = 0;

export function freshDir(parent: string, label: string): string {
  const dir = join(parent, `${label.replace(/[^a-z0-9-]/gi, "_")}-${++counter}`);
  fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
  return dir;
}

/** Writes `bytes` to `path` and makes it durable, so the experiment starts from a known state. */
export function durableFile(path: string, bytes: Uint8Array, mode = 0o644): void {
  const fd = fs.openSync(path, "w", mode);
  try {
    fs.writeSync(fd, bytes);
    fs.fchmodSync(fd, mode);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fsyncDir(join(path, ".."));
}

export function fsyncDir(dir: string): void {
  const fd = fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

// ---------------------------------------------------------------------------------------------
// The one table.

export interface Row {
  technique: string;
  writer: string;
  states: number;
  faults: number;
  bad: number;
  residue: number;
  note?: string;
}

export function printTable(rows: Row[]): string {
  const header = ["technique", "API / writer", "states explored", "faults injected", "bad states", "residue", "note"];
  const cells = rows.map((r) => [
    r.technique,
    r.writer,
    String(r.states),
    String(r.faults),
    String(r.bad),
    String(r.residue),
    r.note ?? "",
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => (c[i] as string).length)));
  const line = (c: string[]) => `| ${c.map((x, i) => x.padEnd(widths[i] as number)).join(" | ")} |`;
  return [line(header), `|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`, ...cells.map(line)].join("\n");
}

let injector: string | undefined;

/** The ptrace injector (inject.c), compiled once per run; needs a C compiler (gcc in CI). */
export function buildInjector(workDir: string): string {
  if (injector === undefined) {
    const out = join(workDir, "inject");
    const built = spawnSync("cc", ["-O2", "-Wall", "-o", out, join(HERE, "inject.c")], { encoding: "utf8" });
    if (built.status !== 0) throw new Error(`cannot compile reliability/inject.c: ${built.stderr ?? built.error}`);
    injector = out;
  }
  return injector;
}

/** Runs `argv` without blocking, collecting its output; `timeoutMs` kills it. */
export async function spawnAsync(
  argv: string[],
  env: Record<string, string>,
  timeoutMs = 60_000,
): Promise<{ status: number | null; stdout: string; stderr: string }> {
  const child = Bun.spawn(argv, { env, stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  const [stdout, stderr] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text()]);
  const status = await child.exited;
  clearTimeout(timer);
  return { status, stdout, stderr };
}

/** Runs the jobs with at most `width` at once (the machine has two cores). */
export async function pool<T>(jobs: (() => Promise<T>)[], width = 2): Promise<T[]> {
  const results: T[] = new Array(jobs.length);
  let next = 0;
  const lane = async () => {
    while (next < jobs.length) {
      const index = next++;
      results[index] = await (jobs[index] as () => Promise<T>)();
    }
  };
  await Promise.all(Array.from({ length: Math.min(width, jobs.length) }, lane));
  return results;
}

export function escapeRegex(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

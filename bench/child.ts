/**
 * One measurement in a fresh process, so nothing another cell allocated or traced is counted.
 *
 *   bun bench/child.ts '{"job":"memory","contender":"wfa-sync","data":"ascii","bytes":536870912,"path":"..."}'
 *     builds the data, writes 1 MiB of it once to warm up, resets the peak RSS (VmHWM) to the current
 *     RSS, writes once, then does the same for a second write of the data, and prints
 *     {"baseKiB":…, "peakKiB":…, "fileKiB":…, "againBaseKiB":…, "againPeakKiB":…, "againFileKiB":…}
 *     as JSON: extra = peak - base, of which fileKiB were file-backed pages (see measuredWrite).
 *   bun bench/child.ts '{"job":"loop","contender":"aw-sync-bytes","bytes":100,"count":500,"path":"..."}'
 *     writes `count` times (run under `strace -c -f` by the bench, twice with different counts).
 */
import * as fs from "node:fs";
import { contender, type Payload } from "./contenders.ts";

interface MemoryJob {
  job: "memory";
  contender: string;
  data: "ascii" | "non-ascii" | "buffer";
  bytes: number;
  path: string;
}

interface LoopJob {
  job: "loop";
  contender: string;
  bytes: number;
  count: number;
  path: string;
}

function status(field: "VmHWM" | "VmRSS" | "RssFile"): number {
  const match = fs.readFileSync("/proc/self/status", "utf8").match(new RegExp(`^${field}:\\s+(\\d+) kB`, "m"));
  if (!match) throw new Error(`no ${field} in /proc/self/status`);
  return Number(match[1]);
}

/** Data of `bytes` UTF-8 bytes, built without a large temporary so the baseline RSS is the data itself. */
function build(data: MemoryJob["data"], bytes: number): Payload {
  if (data === "buffer") return { kind: "bytes", bytes: Buffer.alloc(bytes, 0x61) };
  // "€" is 3 bytes of UTF-8 and forces a 16-bit string: the hardest case for an encoder.
  const text = data === "ascii" ? "a".repeat(bytes) : "€".repeat(Math.floor(bytes / 3));
  // A repeat may come back as a rope; searching it makes the engine flatten it now, before the baseline.
  if (text.indexOf("\0") !== -1) throw new Error("unexpected NUL");
  return { kind: "text", text, bytes: new Uint8Array(0) };
}

async function memory(job: MemoryJob): Promise<void> {
  const payload = build(job.data, job.bytes);
  const who = contender(job.contender);
  // One 1 MiB write of the same kind first: what a module costs once (loading libc, compiling its
  // code) is not what each write costs, and a long-running program pays it once.
  const warm = `${job.path}.warm`;
  await who.write(warm, build(job.data, Math.min(job.bytes, 1024 * 1024)));
  fs.rmSync(warm);
  const first = await measuredWrite(() => who.write(job.path, payload));
  // The same write again: what a program that has written this much before pays (the runtime has
  // compiled the write loop by now; the rest is per write).
  const again = await measuredWrite(() => who.write(job.path, payload));
  const reset = first.reset && again.reset;
  process.stdout.write(
    `${JSON.stringify({ ...first, againBaseKiB: again.baseKiB, againPeakKiB: again.peakKiB, againFileKiB: again.fileKiB, reset })}\n`,
  );
}

/**
 * `fileKiB`: how much the file-backed part of the RSS grew during the write. Those are pages of
 * files mapped in memory: here, the runtime's own code read from its executable the first time
 * it runs (its JIT compiler's, mostly), shared with every other process running it and dropped
 * under memory pressure without swapping. They count in VmHWM, but the write allocated none of it.
 */
async function measuredWrite(
  write: () => unknown,
): Promise<{ baseKiB: number; peakKiB: number; fileKiB: number; reset: boolean }> {
  Bun.gc(true);
  let reset = true;
  try {
    // Linux: writing 5 to clear_refs resets VmHWM to the current RSS.
    fs.writeFileSync("/proc/self/clear_refs", "5");
  } catch {
    reset = false;
  }
  const baseKiB = reset ? status("VmHWM") : status("VmRSS");
  const fileBaseKiB = status("RssFile");
  await write();
  return { baseKiB, peakKiB: status("VmHWM"), fileKiB: status("RssFile") - fileBaseKiB, reset };
}

async function loop(job: LoopJob): Promise<void> {
  const text = "x".repeat(job.bytes);
  const payload: Payload = { kind: "both", text, bytes: Buffer.from(text) };
  const who = contender(job.contender);
  for (let i = 0; i < job.count; i++) await who.write(job.path, payload);
}

const job = JSON.parse(process.argv[2] ?? "{}") as MemoryJob | LoopJob;
if (job.job === "memory") await memory(job);
else if (job.job === "loop") await loop(job);
else throw new Error(`unknown job ${process.argv[2]}`);

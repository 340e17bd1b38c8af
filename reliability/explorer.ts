/**
 * Crash-state explorer (after ALICE, Pillai et al., OSDI'14).
 *
 * A real write runs under strace; its trace becomes logical operations (trace.ts). For every crash
 * point (after each operation) this enumerates the on-disk states a conservative persistence
 * model allows, and checks each: the target holds the whole old or the whole new version
 * (atomicity), and once the write has returned every state holds the new one (durability).
 *
 * The model, deliberately weaker than any real file system:
 * - an operation that no sync covers may be lost, independently of every other one (so un-synced
 *   operations are also reordered freely);
 * - a data write may persist whole, not at all, cut to a prefix, or as zeros over its range (the
 *   size persisted but not the data);
 * - fsync(file) persists that inode's data and metadata written before it was called, but not
 *   any name of it; fdatasync the same without the mode;
 * - fsync(directory) persists that directory's entry changes (create, rename, link, unlink) made
 *   before it was called; sync/syncfs persists everything before it;
 * - rename, link, unlink and a create's name are each atomic: persisted wholly or not at all.
 */
import * as fs from "node:fs";
import { join } from "node:path";
import {
  durableFile,
  freshDir,
  hashSeed,
  isBatch,
  makePayload,
  outcomeOf,
  prng,
  type Row,
  secondPayload,
  type TempKind,
  verifyPayload,
  type Writer,
  writerCommand,
} from "./common.ts";
import { type Op, traceRun } from "./trace.ts";

export interface Version {
  bytes: Buffer;
  mode: number;
}

/** One file the write replaces (a batch replaces several). */
export interface TargetSpec {
  /** Its name in the modelled directory. */
  name: string;
  /** The version before the write; undefined when the file did not exist. */
  old?: Version;
  next: Version;
}

export interface Scenario {
  targets: TargetSpec[];
  /** Names in the directory before the write, and their inodes' persisted contents. */
  entries: Map<string, number>;
  inodes: Map<number, Version>;
  /** Whether the write returned success (only then must every final state hold the new versions). */
  succeeded: boolean;
}

export interface BadState {
  crashAfter: string;
  why: string;
  persisted: string;
}

export interface Exploration {
  crashPoints: number;
  states: number;
  /** How many states the model allows in all (may exceed what was explored when sampling). */
  possible: number;
  sampled: boolean;
  bad: BadState[];
  badCount: number;
  residueStates: number;
}

const LOST = 0;
const FULL = 1;
const PREFIX = 2;
const ZEROS = 3;
const CHOICE_NAMES = ["lost", "persisted", "prefix only", "as zeros"];

function isDirOp(op: Op): boolean {
  return op.kind === "create" || op.kind === "rename" || op.kind === "link" || op.kind === "unlink";
}

/** The directory whose entries a directory operation changes (a rename: the destination's). */
function dirOf(op: Op): string | undefined {
  if (op.kind === "rename") return op.toDir;
  if (op.kind === "create" || op.kind === "link" || op.kind === "unlink") return op.dir;
  return undefined;
}

function dataIno(op: Op): number | undefined {
  if (op.kind === "write" || op.kind === "truncate" || op.kind === "chmod") return op.ino;
  return undefined;
}

function prefixLength(length: number): number {
  if (length > 8192) return Math.floor(length / 2 / 4096) * 4096;
  return Math.max(1, Math.floor(length / 2));
}

/** Which of the first `k` operations some sync among them forces to be persisted. */
function forcedAt(ops: Op[], k: number): boolean[] {
  const forced = new Array<boolean>(k).fill(false);
  for (let j = 0; j < k; j++) {
    const sync = ops[j] as Op;
    if (sync.kind !== "fsync" && sync.kind !== "fsyncDir" && sync.kind !== "sync") continue;
    for (let i = 0; i < Math.min(sync.covers, k); i++) {
      const op = ops[i] as Op;
      if (sync.kind === "sync") forced[i] = true;
      else if (sync.kind === "fsyncDir") {
        if (isDirOp(op) && dirOf(op) === sync.dir) forced[i] = true;
      } else if (dataIno(op) === sync.ino && !(sync.dataOnly && op.kind === "chmod")) forced[i] = true;
    }
  }
  return forced;
}

export function explore(ops: Op[], scenario: Scenario, options: { cap: number; seed: number }): Exploration {
  const result: Exploration = { ...NOTHING, bad: [] };
  // Inodes that some state could show under a target's name.
  const candidates = new Set<number>();
  const targetNames = new Set(scenario.targets.map((t) => t.name));
  for (const name of targetNames) {
    const initial = scenario.entries.get(name);
    if (initial !== undefined) candidates.add(initial);
  }
  for (const op of ops) {
    if (op.kind === "create" && targetNames.has(op.name)) candidates.add(op.ino);
    if (op.kind === "rename" && targetNames.has(op.to)) candidates.add(op.ino);
    if (op.kind === "link" && targetNames.has(op.name)) candidates.add(op.ino);
  }
  const initialNames = new Set(scenario.entries.keys());
  const verdicts = new Map<string, string>(); // target, inode and content choices -> "old" | "new" | why it is bad

  for (let k = 0; k <= ops.length; k++) {
    if (k > 0 && !changesState(ops[k - 1] as Op)) continue; // same states as the point before
    result.crashPoints++;
    const forced = forcedAt(ops, k);
    const free: number[] = [];
    const radix: number[] = [];
    for (let i = 0; i < k; i++) {
      const op = ops[i] as Op;
      if (forced[i]) continue;
      if (isDirOp(op)) {
        free.push(i);
        radix.push(2);
      } else if (dataIno(op) !== undefined && candidates.has(dataIno(op) as number)) {
        free.push(i);
        radix.push(op.kind === "write" ? (op.data.length >= 2 ? 4 : 3) : 2);
      }
    }
    const total = radix.reduce((a, b) => a * b, 1);
    result.possible += total;
    const vectors: number[][] = [];
    if (total <= options.cap) {
      for (let n = 0; n < total; n++) {
        const vector: number[] = [];
        let rest = n;
        for (const r of radix) {
          vector.push(rest % r);
          rest = Math.floor(rest / r);
        }
        vectors.push(vector);
      }
    } else {
      result.sampled = true;
      const random = prng(hashSeed(options.seed, k, ops.length));
      vectors.push(
        radix.map(() => LOST),
        radix.map(() => FULL),
      );
      while (vectors.length < options.cap) vectors.push(radix.map((r) => Math.floor(random() * r)));
    }
    const chosen = new Array<number>(k).fill(FULL);
    for (const vector of vectors) {
      free.forEach((i, slot) => {
        chosen[i] = vector[slot] as number;
      });
      result.states++;
      // Names first: which inode the target names, and whether a temp is left.
      const names = new Map(scenario.entries);
      for (let i = 0; i < k; i++) {
        const op = ops[i] as Op;
        if (!isDirOp(op) || (!forced[i] && chosen[i] === LOST)) continue;
        if (op.kind === "create" || op.kind === "link") names.set(op.kind === "create" ? op.name : op.name, op.ino);
        else if (op.kind === "rename") {
          // Atomic: the new name now refers to the inode, the old one is gone (if it persisted at all).
          if (names.get(op.from) === op.ino) names.delete(op.from);
          names.set(op.to, op.ino);
        } else if (op.kind === "unlink" && names.get(op.name) === op.ino) names.delete(op.name);
      }
      if ([...names.keys()].some((name) => !initialNames.has(name) && !targetNames.has(name))) result.residueStates++;
      const atEnd = k === ops.length && scenario.succeeded;
      const problems: string[] = [];
      for (const target of scenario.targets) {
        const ino = names.get(target.name);
        let verdict: string;
        if (ino === undefined) verdict = target.old === undefined ? "old" : `${target.name} is missing`;
        else {
          let key = `${target.name}:${ino}:`;
          for (let i = 0; i < k; i++) {
            if (dataIno(ops[i] as Op) === ino) key += forced[i] ? "F" : String(chosen[i]);
          }
          let known = verdicts.get(key);
          if (known === undefined) {
            known = judge(contents(ops, k, ino, scenario, forced, chosen), target);
            verdicts.set(key, known);
          }
          verdict = known;
        }
        if (atEnd && verdict === "old")
          verdict = `the write returned, yet a crash now can still show the old ${target.name}`;
        if (verdict !== "old" && verdict !== "new") problems.push(verdict);
      }
      if (problems.length > 0) {
        result.badCount++;
        if (result.bad.length < 5) {
          result.bad.push({
            crashAfter: k === 0 ? "(before any operation)" : `#${k} ${(ops[k - 1] as Op).call}`,
            why: problems.join("; "),
            persisted: free.map((i) => `${(ops[i] as Op).call}: ${CHOICE_NAMES[chosen[i] as number]}`).join("; "),
          });
        }
      }
    }
  }
  return result;
}

function changesState(op: Op): boolean {
  return op.kind !== "chown";
}

function contents(ops: Op[], k: number, ino: number, scenario: Scenario, forced: boolean[], chosen: number[]): Version {
  const start = scenario.inodes.get(ino);
  let size = start?.bytes.length ?? 0;
  let mode = start?.mode ?? 0;
  let capacity = size;
  for (let i = 0; i < k; i++) {
    const op = ops[i] as Op;
    if (op.kind === "write" && op.ino === ino) capacity = Math.max(capacity, op.offset + op.data.length);
    if (op.kind === "truncate" && op.ino === ino) capacity = Math.max(capacity, op.size);
    if ((op.kind === "create" || op.kind === "anon") && op.ino === ino) mode = op.mode;
  }
  const bytes = Buffer.alloc(capacity);
  start?.bytes.copy(bytes);
  for (let i = 0; i < k; i++) {
    const op = ops[i] as Op;
    if (dataIno(op) !== ino) continue;
    const choice = forced[i] ? FULL : (chosen[i] as number);
    if (choice === LOST) continue;
    if (op.kind === "write") {
      const length = choice === PREFIX ? prefixLength(op.data.length) : op.data.length;
      if (choice === ZEROS) bytes.fill(0, op.offset, op.offset + length);
      else op.data.copy(bytes, op.offset, 0, length);
      size = Math.max(size, op.offset + length);
    } else if (op.kind === "truncate") {
      if (op.size > size) bytes.fill(0, size, op.size);
      size = op.size;
    } else if (op.kind === "chmod") mode = op.mode;
  }
  return { bytes: bytes.subarray(0, size), mode };
}

function judge(found: Version, target: TargetSpec): string {
  const same = (a: Version, b: Version) => a.mode === b.mode && a.bytes.equals(b.bytes);
  if (target.old && same(found, target.old)) return "old";
  if (same(found, target.next)) return "new";
  const verdict = verifyPayload(found.bytes);
  if (!verdict.ok) return `torn ${target.name}: ${verdict.why}`;
  for (const [label, version] of [
    ["old", target.old],
    ["new", target.next],
  ] as const) {
    if (version?.bytes.equals(found.bytes)) {
      return `${target.name} holds the ${label} bytes with mode 0${found.mode.toString(8)}, expected 0${version.mode.toString(8)}`;
    }
  }
  return `${target.name} holds another whole version (${verdict.version}): not this write's`;
}

// ---------------------------------------------------------------------------------------------
// The technique: trace one real write per writer and explore its crash states.

/** Body sizes chosen so each API issues the writes it issues in real use (one, several, pooled). */
export const PAYLOAD_BODY: Record<string, number> = {
  "sync-bytes": 40_000,
  "sync-text": 600_000, // three pieces of the piecewise text encoder
  "async-bytes": 100_000, // large enough to go to the thread pool
  "async-text": 300_000, // one pooled piece, one small piece on the main thread
  stream: 100_000, // seven 16 KiB chunks, bytes and strings alternating
  cli: 200_000, // whatever the pipe hands over per read
  batch: 40_000, // plus a second file of 50 KB
  "batch-async": 100_000,
};

export interface CrashRun {
  writer: Writer;
  kind: TempKind;
  exists: boolean;
  exploration: Exploration;
  /** Why the run could not be explored (a failed write, an unmodelled call). */
  problem?: string;
  ops: number;
}

export function crashRun(
  writer: Writer,
  kind: TempKind,
  exists: boolean,
  work: string,
  options: { cap: number; seed: number },
): CrashRun {
  const dir = freshDir(work, `crash-${writer}-${kind}-${exists ? "replace" : "create"}`);
  const target = join(dir, "target");
  const payloadFile = join(work, `payload-${writer}-${Date.now()}.bin`);
  // A batch replaces a second file too, with a payload of its own so a swap would show.
  const files = [{ name: "target", old: makePayload(1, 30_000), next: makePayload(2, PAYLOAD_BODY[writer] ?? 40_000) }];
  fs.writeFileSync(payloadFile, files[0]?.next as Buffer);
  if (isBatch(writer)) {
    files.push({ name: "target2", old: makePayload(11, 25_000), next: makePayload(12, 50_000) });
    fs.writeFileSync(secondPayload(payloadFile), files[1]?.next as Buffer);
  }
  const entries = new Map<string, number>();
  const inodes = new Map<number, Version>();
  if (exists) {
    for (const [index, file] of files.entries()) {
      durableFile(join(dir, file.name), file.old, 0o644);
      entries.set(file.name, index + 1);
      inodes.set(index + 1, { bytes: file.old, mode: 0o644 });
    }
  }
  const { raw, traced } = traceRun(
    writerCommand(writer, target, payloadFile, kind, work),
    join(work, `trace-${writer.replace(":", "_")}.log`),
    {
      dir,
      entries,
      sizes: new Map([...inodes].map(([ino, v]) => [ino, v.bytes.length])),
      cwd: process.cwd(),
      umask: process.umask(),
    },
  );
  const outcome = outcomeOf(writer, raw);
  const base = { writer, kind, exists, ops: traced.ops.length };
  const fail = (problem: string): CrashRun => ({ ...base, exploration: { ...NOTHING, bad: [] }, problem });
  if (!outcome.ok)
    return fail(`the write failed: ${outcome.code ?? outcome.status} ${outcome.message ?? outcome.stderr}`);
  if (traced.unmodelled.length > 0) return fail(`unmodelled calls: ${traced.unmodelled.join(", ")}`);
  const targets: TargetSpec[] = [];
  for (const file of files) {
    const path = join(dir, file.name);
    if (!fs.readFileSync(path).equals(file.next))
      return fail(`the write returned but ${file.name} is not the new version`);
    targets.push({
      name: file.name,
      old: exists ? { bytes: file.old, mode: 0o644 } : undefined,
      next: { bytes: file.next, mode: fs.statSync(path).mode & 0o7777 },
    });
  }
  fs.rmSync(payloadFile, { force: true });
  fs.rmSync(secondPayload(payloadFile), { force: true });
  const scenario: Scenario = { targets, entries, inodes, succeeded: true };
  return {
    ...base,
    exploration: explore(traced.ops, scenario, { cap: options.cap, seed: hashSeed(options.seed, writer, kind) }),
  };
}

const NOTHING: Exploration = {
  crashPoints: 0,
  states: 0,
  possible: 0,
  sampled: false,
  bad: [],
  badCount: 0,
  residueStates: 0,
};

export function crashRow(runs: CrashRun[], writer: string): Row {
  const states = runs.reduce((n, r) => n + r.exploration.states, 0);
  const bad = runs.reduce((n, r) => n + r.exploration.badCount + (r.problem ? 1 : 0), 0);
  const residue = runs.reduce((n, r) => n + r.exploration.residueStates, 0);
  const sampled = runs.some((r) => r.exploration.sampled);
  const points = runs.reduce((n, r) => n + r.exploration.crashPoints, 0);
  const note = `${runs.length} traces, ${points} crash points${sampled ? ", sampled where > cap" : ", exhaustive"}`;
  return { technique: "crash states (ALICE model)", writer, states, faults: 0, bad, residue, note };
}

/**
 * Syscall fault matrix. For each writer, one clean run under the ptrace injector (inject.c) lists
 * the protocol's system calls on the target's directory; then every one of them is failed in turn
 * (EIO, ENOSPC, EACCES), each in a fresh directory, and the outcome is checked:
 *
 * - failed before or at the rename: the call fails with that .code (the CLI exits 1 with one
 *   stderr line naming the path), and the directory is exactly as before: same target bytes,
 *   mode, owner and inode, no new entry (so no temp left);
 * - failed opening or fsyncing the directory after the rename: the call fails with that .code and
 *   `published: true` (the CLI exits 3), the target holds the new bytes with the old mode and
 *   owner, and no temp is left;
 * - a failed close of a named temp, or of any temp in a batch: it comes before the rename, so the
 *   write fails like any step before it (the library calls close through libc, which reports its
 *   error; node:fs under Bun would not);
 * - a failed close of a single write's anonymous temp (after the rename: it is kept open to keep the
 *   kill -9 window short) or of the directory (after the fsyncs that matter), or a refused fchown
 *   (ownership is best effort by contract): the write succeeds, completely.
 *
 * The injector counts matching calls across all threads, so "the 2nd write to the temp" is the
 * same call whichever pool thread performs it; every cell also checks in the injector's log that
 * the failure hit the call it names.
 */
import * as fs from "node:fs";
import { basename, join } from "node:path";
import { type EntryState, isRoot, NOBODY, snapshot, tempResidue } from "../test/helpers.ts";
import {
  buildInjector,
  durableFile,
  escapeRegex,
  freshDir,
  isBatch,
  makePayload,
  outcomeOf,
  pool,
  type Row,
  secondPayload,
  spawnAsync,
  type TempKind,
  type Writer,
  writerCommand,
} from "./common.ts";

export const ERRNOS: Record<string, number> = { EIO: 5, ENOSPC: 28, EACCES: 13 };

const PROTOCOL =
  "openat,open,creat,write,pwrite64,writev,pwritev,pwritev2,fchmod,fchown,fsync,fdatasync,close,rename,renameat,renameat2,linkat,link,unlink,unlinkat";

/**
 * fails: nothing changed. published: the call failed after every rename, all new. succeeds: all
 * new. partial: a batch's second rename failed: the first file is new, the second as it was.
 */
type Expect = "fails" | "published" | "succeeds" | "partial";

interface Step {
  label: string;
  syscall: string;
  /** Which matching call of that syscall name to fail. */
  nth: number;
  expect: Expect;
}

export interface Cell {
  writer: Writer;
  kind: TempKind;
  step: string;
  errno: string;
  injected: boolean;
  problems: string[];
  residue: number;
}

const OLD_MODE = 0o640;

function matchDir(dir: string): string {
  return `(^| )${escapeRegex(dir)}(/| |$)`;
}

interface Prepared {
  dir: string;
  /** The path the writer is given (a batch also writes `${target}2`). */
  target: string;
  payloadFile: string;
  /** Each file the write replaces, with its new contents. */
  files: { path: string; next: Buffer }[];
}

/** A directory holding the old versions, owned by someone else when we may arrange that. */
function prepare(work: string, label: string, writer: Writer): Prepared {
  const dir = freshDir(work, label);
  const target = join(dir, "target");
  const payloadFile = join(dir, "..", `${label}.payload`);
  const files = [{ path: target, next: makePayload(2, 150_000) }];
  fs.writeFileSync(payloadFile, files[0]?.next as Buffer);
  if (isBatch(writer)) {
    files.push({ path: `${target}2`, next: makePayload(12, 60_000) });
    fs.writeFileSync(secondPayload(payloadFile), files[1]?.next as Buffer);
  }
  for (const [index, file] of files.entries()) {
    durableFile(file.path, makePayload(1 + 10 * index, 20_000), OLD_MODE);
    // Another owner makes the protocol's fchown happen, so it can be failed too.
    if (isRoot) fs.chownSync(file.path, NOBODY, NOBODY);
  }
  return { dir, target, payloadFile, files };
}

/** Names each protocol call of a clean run, and says what failing it must lead to. */
function classify(subjects: string[], dir: string, batch: boolean, kind: TempKind): Step[] {
  const d = escapeRegex(dir);
  const temp = `${d}/(#\\d+ \\(deleted\\)|\\.[^/]*\\.tmp)`;
  const rules: [RegExp, string, Expect][] = [
    [new RegExp(`^(openat|open) ${d} tmpfile`), "open temp (O_TMPFILE)", "fails"],
    [new RegExp(`^(openat|open|creat) ${temp}( |$)`), "open temp", "fails"],
    [new RegExp(`^(openat|open|creat) ${d}/target( .*)?(creat|trunc)`), "open target in place", "fails"],
    [new RegExp(`^(write|pwrite64|writev|pwritev|pwritev2) (${temp}|${d}/target)$`), "write", "fails"],
    [new RegExp(`^fchown ${temp}$`), "fchown", "succeeds"],
    [new RegExp(`^fchmod ${temp}$`), "fchmod", "fails"],
    [new RegExp(`^(fsync|fdatasync) (${temp}|${d}/target)$`), "fsync temp", "fails"],
    [new RegExp(`^(linkat|link) .* -> ${temp}$`), "linkat temp", "fails"],
    [new RegExp(`^close ${temp}$`), "close temp", "fails"],
    [new RegExp(`^(rename|renameat|renameat2) ${temp} -> ${d}/target2?$`), "rename", "fails"],
    [new RegExp(`^(openat|open) ${d} directory$`), "open dir", "published"],
    [new RegExp(`^(fsync|fdatasync) ${d}$`), "fsync dir", "published"],
  ];
  const steps: Step[] = [];
  const perName = new Map<string, number>();
  const perLabel = new Map<string, number>();
  let dirOpen = false;
  for (const subject of subjects) {
    const syscall = subject.split(" ")[0] as string;
    const nth = (perName.get(syscall) ?? 0) + 1;
    perName.set(syscall, nth);
    let label: string | undefined;
    let expect: Expect = "fails";
    for (const [pattern, name, outcome] of rules) {
      if (pattern.test(subject)) {
        label = name;
        expect = outcome;
        break;
      }
    }
    if (label === "open dir") dirOpen = true;
    // A single write closes its anonymous temp only after the rename (index.ts, stageTemp).
    if (label === "close temp" && !batch && kind === "anonymous") expect = "succeeds";
    if (label === undefined && dirOpen && subject === `close ${dir}`) {
      label = "close dir";
      expect = "succeeds";
    }
    if (label === undefined) continue; // not a protocol step (e.g. the O_PATH probe of the directory)
    const count = (perLabel.get(label) ?? 0) + 1;
    perLabel.set(label, count);
    // A batch whose second rename fails has already replaced the first file.
    if (batch && label === "rename" && count > 1) expect = "partial";
    const numbered = label === "write" || count > 1 ? `${label} #${count}` : label;
    steps.push({ label: numbered, syscall, nth, expect });
  }
  return steps;
}

/** The matched calls of a run, from the injector's log. */
function matchedSubjects(log: string): { subject: string; injected: boolean }[] {
  return fs
    .readFileSync(log, "utf8")
    .split("\n")
    .filter((line) => line.includes("\tMATCH "))
    .map((line) => {
      const [, subject] = line.split("\t");
      return { subject: subject as string, injected: line.includes("\tINJECTED ") };
    });
}

export async function discover(writer: Writer, kind: TempKind, work: string): Promise<Step[]> {
  const inject = buildInjector(work);
  const { dir, target, payloadFile } = prepare(work, `discover-${writer}-${kind}`, writer);
  const command = writerCommand(writer, target, payloadFile, kind, work);
  const log = join(dir, "..", `discover-${writer.replace(":", "_")}-${kind}.log`);
  const run = await spawnAsync(
    [inject, "--watch", PROTOCOL, "--match", matchDir(dir), "--log", log, "--", ...command.argv],
    command.env,
  );
  const outcome = outcomeOf(writer, run);
  if (!outcome.ok) throw new Error(`clean run of ${writer} failed: ${outcome.code} ${outcome.message ?? run.stderr}`);
  return classify(
    matchedSubjects(log).map((m) => m.subject),
    dir,
    isBatch(writer),
    kind,
  );
}

async function runCell(writer: Writer, kind: TempKind, step: Step, errno: string, work: string): Promise<Cell> {
  const inject = buildInjector(work);
  const label = `fault-${writer}-${kind}-${step.label}-${errno}`;
  const { dir, target, payloadFile, files } = prepare(work, label, writer);
  const before = snapshot(dir);
  const command = writerCommand(writer, target, payloadFile, kind, work);
  const log = join(dir, "..", `${label.replace(/[^a-z0-9-]/gi, "_")}.log`);
  const argv = [
    inject,
    "--watch",
    step.syscall,
    "--match",
    matchDir(dir),
    "--nth",
    String(step.nth),
    "--errno",
    String(ERRNOS[errno]),
    "--log",
    log,
    "--",
    ...command.argv,
  ];
  const run = await spawnAsync(argv, command.env);
  const outcome = outcomeOf(writer, run);
  const hit = matchedSubjects(log).find((m) => m.injected);
  const cell: Cell = { writer, kind, step: step.label, errno, injected: hit !== undefined, problems: [], residue: 0 };
  const problem = (text: string) => cell.problems.push(text);
  if (!hit) problem(`the injection never happened (run: ${outcome.code ?? outcome.status})`);
  const residue = tempResidue(dir);
  cell.residue = residue.length;
  if (residue.length > 0) problem(`temp left behind: ${residue.join(", ")}`);
  const isCli = writer === "cli";
  const stderrLines = run.stderr.trim().split("\n").filter(Boolean);
  const failed = step.expect !== "succeeds";
  const published = step.expect === "published" || step.expect === "partial";
  if (!failed) {
    if (!outcome.ok) problem(`should have succeeded, failed with ${outcome.code ?? `exit ${outcome.status}`}`);
  } else if (outcome.ok) problem("reported success although a protocol call failed");
  else if (isCli) {
    const want = published ? 3 : 1;
    if (outcome.status !== want) problem(`CLI exited ${outcome.status}, expected ${want}`);
    if (stderrLines.length !== 1 || !(stderrLines[0] as string).includes(target)) {
      problem(`CLI stderr is not one line naming the path: ${JSON.stringify(run.stderr)}`);
    }
  } else {
    if (outcome.code !== errno) problem(`.code is ${outcome.code}, expected ${errno}`);
    // A batch's directory fsync is one call for several files: it names the directory.
    const named = isBatch(writer) && step.expect === "published" ? [dir] : files.map((file) => file.path);
    if (!named.some((path) => outcome.message?.includes(path))) {
      problem(`message does not name the path: ${outcome.message}`);
    }
    if ((outcome.published === true) !== published) problem(`published is ${outcome.published}`);
    if (isBatch(writer) && published) {
      const want = step.expect === "partial" ? [target] : files.map((file) => file.path);
      if (JSON.stringify(outcome.renamed) !== JSON.stringify(want)) {
        problem(`renamed is ${JSON.stringify(outcome.renamed)}, expected ${JSON.stringify(want)}`);
      }
    }
  }
  const after = snapshot(dir);
  // The files this step must leave as they were: all of them, none, or a batch's second one.
  const unchanged = step.expect === "fails" ? files : step.expect === "partial" ? files.slice(1) : [];
  const names = new Set(files.map((file) => basename(file.path)));
  if (step.expect === "fails") {
    const change = describeChange(before, after);
    if (change) problem(`the directory changed: ${change}`);
  } else {
    for (const file of files) {
      const name = basename(file.path);
      if (unchanged.includes(file)) {
        const change = describeChange({ [name]: before[name] as EntryState }, { [name]: after[name] as EntryState });
        if (change) problem(`the directory changed: ${change}`);
        continue;
      }
      const entry = after[name];
      if (!entry) {
        problem(`${name} is gone`);
        continue;
      }
      if (!fs.readFileSync(file.path).equals(file.next)) problem(`${name} does not hold the whole new version`);
      if (entry.mode !== OLD_MODE) problem(`${name} has mode 0${entry.mode.toString(8)}, expected 0640`);
      if (isRoot && !step.label.startsWith("fchown") && (entry.uid !== NOBODY || entry.gid !== NOBODY)) {
        problem(`${name} is owned by ${entry.uid}:${entry.gid}, expected ${NOBODY}:${NOBODY}`);
      }
    }
    const extra = Object.keys(after).filter((name) => !names.has(name));
    if (extra.length > 0) problem(`unexpected entries: ${extra.join(", ")}`);
  }
  return cell;
}

/** What differs between two snapshots, entry by entry. */
function describeChange(before: ReturnType<typeof snapshot>, after: ReturnType<typeof snapshot>): string {
  const parts: string[] = [];
  for (const name of new Set([...Object.keys(before), ...Object.keys(after)])) {
    const was = before[name];
    const now = after[name];
    if (!was) parts.push(`new entry ${name}`);
    else if (!now) parts.push(`${name} removed`);
    else {
      const fields = (Object.keys(was) as (keyof typeof was)[]).filter((key) => was[key] !== now[key]);
      if (fields.length > 0)
        parts.push(`${name}: ${fields.map((f) => (f === "sha256" ? "contents" : f)).join(", ")} changed`);
    }
  }
  return parts.join("; ");
}

export async function faultMatrix(
  writer: Writer,
  kinds: { kind: TempKind; errnos: string[] }[],
  work: string,
): Promise<Cell[]> {
  const jobs: (() => Promise<Cell>)[] = [];
  for (const { kind, errnos } of kinds) {
    const steps = await discover(writer, kind, work);
    for (const step of steps) for (const errno of errnos) jobs.push(() => runCell(writer, kind, step, errno, work));
  }
  return pool(jobs, 2);
}

export function faultRow(writer: Writer, cells: Cell[]): Row {
  const bad = cells.filter((c) => c.problems.length > 0).length;
  const steps = new Set(cells.map((c) => c.step)).size;
  return {
    technique: "syscall fault matrix",
    writer,
    states: cells.length,
    faults: cells.filter((c) => c.injected).length,
    bad,
    residue: cells.reduce((n, c) => n + c.residue, 0),
    note: `${steps} protocol calls x ${[...new Set(cells.map((c) => c.errno))].join("/")}`,
  };
}

/** The matrix as text: one line per protocol call, one column per errno and temp kind. */
export function printMatrix(writer: Writer, cells: Cell[]): string {
  const columns = [...new Set(cells.map((c) => `${c.kind}/${c.errno}`))];
  const steps = [...new Set(cells.map((c) => c.step))];
  const lines = [`fault matrix: ${writer}`];
  const width = Math.max(...steps.map((s) => s.length));
  lines.push(`  ${"".padEnd(width)}  ${columns.map((c) => c.padEnd(16)).join("")}`);
  for (const step of steps) {
    const marks = columns.map((column) => {
      const cell = cells.find((c) => c.step === step && `${c.kind}/${c.errno}` === column);
      if (!cell) return "-".padEnd(16);
      return (cell.problems.length === 0 ? "ok" : "BAD").padEnd(16);
    });
    lines.push(`  ${step.padEnd(width)}  ${marks.join("")}`);
  }
  return lines.join("\n");
}

/**
 * Block-level check on real file systems: a loop-mounted ext4 (noauto_da_alloc, so a missing
 * fsync of the temp is not papered over) and xfs image.
 *
 * The writer runs under the ptrace injector in step mode: after each protocol call on the
 * target's directory it is held (no new system call starts) while the backing image file is
 * copied. Each copy is then mounted on its own (journal or log replayed, as after a power cut)
 * and the target checked: the whole old or the whole new version, and the whole new version in
 * the copy taken after the write returned.
 *
 * What a copy is: the bytes the file system had sent to the device at that instant. The
 * device here is a loop device over a file, which keeps every write in order and loses nothing,
 * so a copy is exactly what a power cut at that instant leaves on an in-order disk. ext4 is mounted
 * with commit=600 so its periodic journal commit does not happen during a run and the copies show
 * only what the writer's own fsyncs forced out (the most pessimistic timing), and dirty pages age
 * 30 s before writeback. Not covered: a disk that reorders or drops writes in its volatile cache
 * (or lies about flushes), power cuts in the middle of a system call, other writeback timings.
 * The crash-state explorer covers reordering in the abstract; this checks the real kernels.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import { join } from "node:path";
import { tempResidue } from "../test/helpers.ts";
import {
  buildInjector,
  durableFile,
  escapeRegex,
  freshDir,
  makePayload,
  outcomeOf,
  type Row,
  type Writer,
  writerCommand,
} from "./common.ts";

export type FsKind = "ext4" | "xfs";

export interface BlockRun {
  writer: Writer;
  fs: FsKind;
  snapshots: number;
  bad: string[];
  residue: number;
  problem?: string;
}

function sh(command: string, args: string[]): string {
  const result = spawnSync(command, args, { encoding: "utf8" });
  if (result.status !== 0) throw new Error(`${command} ${args.join(" ")}: ${result.stderr || result.error}`);
  return result.stdout;
}

export function blockTools(): string[] {
  const missing = ["mkfs.ext4", "mkfs.xfs", "mount", "umount", "cp", "mkfifo"].filter(
    (tool) => spawnSync("sh", ["-c", `command -v ${tool}`]).status !== 0,
  );
  return missing;
}

interface Image {
  file: string;
  mount: string;
  fs: FsKind;
}

function makeImage(work: string, kind: FsKind): Image {
  const file = join(work, `${kind}.img`);
  const mount = join(work, `${kind}-mnt`);
  fs.mkdirSync(mount, { recursive: true });
  if (kind === "ext4") {
    sh("truncate", ["-s", "64M", file]);
    // No lazy init: its background thread would write to the device while copies are taken.
    sh("mkfs.ext4", ["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", file]);
  } else {
    sh("truncate", ["-s", "320M", file]); // mkfs.xfs refuses less than 300 MB
    sh("mkfs.xfs", ["-q", "-f", file]);
  }
  sh("mount", ["-o", mountOptions(kind), file, mount]);
  return { file, mount, fs: kind };
}

function mountOptions(kind: FsKind): string {
  return kind === "ext4" ? "loop,noauto_da_alloc,commit=600" : "loop,nouuid";
}

function unmount(path: string): void {
  spawnSync("umount", [path]);
}

/** Mounts a copy of the image (replaying its journal) and reads the target and residue. */
function inspect(copy: string, kind: FsKind, work: string, name: string): { bytes?: Buffer; residue: number } {
  const mount = join(work, `${kind}-check`);
  fs.mkdirSync(mount, { recursive: true });
  sh("mount", ["-o", mountOptions(kind), copy, mount]);
  try {
    const dir = join(mount, name);
    const target = join(dir, "target");
    const bytes = fs.existsSync(target) ? fs.readFileSync(target) : undefined;
    return { bytes, residue: fs.existsSync(dir) ? tempResidue(dir).length : 0 };
  } finally {
    unmount(mount);
  }
}

/** Reads lines from a FIFO, blocking; undefined at end of file. */
function lineReader(fd: number): () => string | undefined {
  let pending = "";
  const chunk = Buffer.alloc(4096);
  return () => {
    for (;;) {
      const newline = pending.indexOf("\n");
      if (newline >= 0) {
        const line = pending.slice(0, newline);
        pending = pending.slice(newline + 1);
        return line;
      }
      const got = fs.readSync(fd, chunk, 0, chunk.length, null);
      if (got === 0) return undefined;
      pending += chunk.toString("utf8", 0, got);
    }
  };
}

export async function blockRun(writer: Writer, kind: FsKind, work: string): Promise<BlockRun> {
  const result: BlockRun = { writer, fs: kind, snapshots: 0, bad: [], residue: 0 };
  const image = makeImage(work, kind);
  const copies: string[] = [];
  try {
    const dir = freshDir(image.mount, `block-${writer}`);
    const name = dir.slice(image.mount.length + 1);
    const target = join(dir, "target");
    const old = makePayload(1, 20_000);
    const next = makePayload(2, 150_000);
    durableFile(target, old, 0o644);
    sh("sync", ["-f", target]);
    const payloadFile = join(work, `block-${kind}-${writer.replace(":", "_")}.payload`);
    fs.writeFileSync(payloadFile, next);
    const out = join(work, `${kind}-step-out`);
    const back = join(work, `${kind}-step-in`);
    for (const fifo of [out, back]) {
      fs.rmSync(fifo, { force: true });
      sh("mkfifo", [fifo]);
    }
    const command = writerCommand(writer, target, payloadFile, "anonymous", work);
    const argv = [
      buildInjector(work),
      "--watch",
      "openat,creat,write,pwrite64,fchmod,fchown,fsync,fdatasync,close,rename,renameat,renameat2,linkat,unlink",
      "--match",
      `(^| )${escapeRegex(dir)}(/| |$)`,
      "--step",
      out,
      back,
      "--",
      ...command.argv,
    ];
    const child = Bun.spawn(argv, { env: command.env, stdout: "pipe", stderr: "pipe" });
    const outputs = Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text()]);
    const fromInjector = fs.openSync(out, "r");
    const toInjector = fs.openSync(back, "w");
    const nextLine = lineReader(fromInjector);
    // Each copy is checked at once and removed, so only one (xfs: 65 MB) exists at a time.
    const check = (label: string, last: boolean) => {
      const copy = join(work, `${kind}-copy.img`);
      copies.push(copy);
      sh("cp", ["--sparse=always", image.file, copy]);
      const seen = inspect(copy, kind, work, name);
      fs.rmSync(copy, { force: true });
      result.snapshots++;
      result.residue += seen.residue;
      let verdict: string | undefined;
      if (seen.bytes === undefined) verdict = "the target is missing";
      else if (seen.bytes.equals(next)) verdict = undefined;
      else if (seen.bytes.equals(old)) {
        verdict = last ? "the write returned, yet the device still holds the old version" : undefined;
      } else verdict = `torn target (${seen.bytes.length} bytes)`;
      if (verdict) result.bad.push(`${label}: ${verdict}`);
    };
    check("before the write", false);
    for (let line = nextLine(); line !== undefined; line = nextLine()) {
      const [, subject, ret] = line.split("\t");
      check(`after ${(subject ?? "").replaceAll(dir, "D")} = ${ret}`, false);
      fs.writeSync(toInjector, "\n");
    }
    fs.closeSync(fromInjector);
    fs.closeSync(toInjector);
    const [stdout, stderr] = await outputs;
    const status = await child.exited;
    const outcome = outcomeOf(writer, { status, stdout, stderr });
    if (!outcome.ok) {
      result.problem = `the write failed: ${outcome.code ?? outcome.status} ${outcome.message ?? stderr}`;
      return result;
    }
    // The copy that matters most: the write has returned, nothing else has been flushed.
    check("after the write returned", true);
  } catch (error) {
    result.problem = (error as Error).message;
  } finally {
    unmount(image.mount);
    for (const copy of copies) fs.rmSync(copy, { force: true });
    fs.rmSync(image.file, { force: true });
  }
  return result;
}

export function blockRow(writer: Writer, runs: BlockRun[]): Row {
  return {
    technique: "block level (loop ext4/xfs)",
    writer,
    states: runs.reduce((n, r) => n + r.snapshots, 0),
    faults: 0,
    bad: runs.reduce((n, r) => n + r.bad.length + (r.problem ? 1 : 0), 0),
    residue: runs.reduce((n, r) => n + r.residue, 0),
    note: "an image copy after each protocol call, mounted and checked",
  };
}

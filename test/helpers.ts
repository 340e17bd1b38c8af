/**
 * Shared fixtures for the test suites: temp dirs, real mounts (tmpfs, read-only), unprivileged
 * children (setpriv), write requests run in a child process, and snapshots of a directory that
 * prove a failed write changed nothing.
 */
import { afterAll, beforeAll, expect } from "bun:test";
import { type SpawnSyncReturns, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

export const ROOT = resolve(import.meta.dir, "..");
export const BUN = process.execPath;
export const isRoot = process.getuid?.() === 0;
export const NOBODY = 65534;

/** Why a root-only test is skipped (CI runs as root, so there it always runs). */
export const ROOT_ONLY = "needs root to mount file systems and drop privileges";

export function has(tool: string): boolean {
  return spawnSync("sh", ["-c", `command -v ${tool}`]).status === 0;
}

// ---------------------------------------------------------------------------------------------
// Temp dirs and mounts, removed by `cleanup()` (call it from afterAll).

const made: string[] = [];
const mounts: string[] = [];

/**
 * Every test file's default timeout, for its tests and its hooks: `setDefaultTimeout(TIMEOUT_MS)` at
 * the top of each (bun starts each file at 5 s again). Bun 1.4.4 does not read bunfig.toml's [test]
 * timeout, so without the call every test and hook had 5 s, and the CLI tests' compile of the binary
 * in beforeAll (3-4 s on an idle 2-core machine, 6-12 s on a busy one) failed the whole file.
 */
export const TIMEOUT_MS = 120_000;

/** A fresh directory, world-searchable so unprivileged children can reach what the test allows. */
export function tempDir(prefix = "aw-"): string {
  const base = join(tmpdir(), "atomic-write-tests");
  fs.mkdirSync(base, { recursive: true, mode: 0o755 });
  fs.chmodSync(base, 0o755);
  const dir = fs.mkdtempSync(join(base, prefix));
  fs.chmodSync(dir, 0o755);
  made.push(dir);
  return dir;
}

/** A real tmpfs of `sizeKiB`, optionally read-only. Root only. */
export function mountTmpfs(sizeKiB = 1024, options: { readOnly?: boolean } = {}): string {
  const dir = tempDir("mnt-");
  run("mount", ["-t", "tmpfs", "-o", `size=${sizeKiB}k,mode=0755`, "tmpfs", dir]);
  mounts.push(dir);
  if (options.readOnly) remount(dir, "ro");
  return dir;
}

/** Can this machine make and mount a `kind` file system (its mkfs, and the kernel's support)? */
export function canMount(kind: "btrfs" | "xfs"): boolean {
  if (!isRoot || !has(`mkfs.${kind}`)) return false;
  const known = fs.readFileSync("/proc/filesystems", "utf8").split("\n");
  return known.some((line) => line.trim() === kind) || spawnSync("modprobe", [kind]).status === 0;
}

/** A fresh `kind` file system of `sizeMiB` in an image file, loop-mounted. Root only. */
export function mountImage(kind: "btrfs" | "xfs", sizeMiB: number): string {
  const image = join(tempDir("img-"), `${kind}.img`);
  fs.writeFileSync(image, "");
  fs.truncateSync(image, sizeMiB * 1024 * 1024);
  run(`mkfs.${kind}`, ["-q", "-f", image]);
  const dir = tempDir("mnt-");
  run("mount", ["-o", "loop", image, dir]);
  mounts.push(dir);
  fs.chmodSync(dir, 0o755);
  return dir;
}

export function remount(dir: string, how: "ro" | "rw"): void {
  run("mount", ["-o", `remount,${how}`, dir]);
}

export function cleanup(): void {
  for (const dir of mounts.splice(0).reverse()) spawnSync("umount", ["-l", dir]);
  for (const dir of made.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
}

export function run(command: string, args: string[], options: { input?: string | Buffer } = {}): string {
  const result = spawnSync(command, args, { input: options.input, encoding: "utf8" });
  if (result.status !== 0) {
    throw new Error(`${command} ${args.join(" ")} failed (${result.status}): ${result.stderr}`);
  }
  return result.stdout;
}

/** Fills a file system until it is full, leaving at most a few bytes free. */
export function fillDisk(dir: string): void {
  const filler = join(dir, "filler");
  const block = Buffer.alloc(64 * 1024, 1);
  const fd = fs.openSync(filler, "w");
  try {
    for (let size = block.length; size >= 1; size = Math.floor(size / 2)) {
      for (;;) {
        try {
          fs.writeSync(fd, block, 0, size);
        } catch {
          break;
        }
      }
    }
  } finally {
    fs.closeSync(fd);
  }
}

// ---------------------------------------------------------------------------------------------
// Snapshots: everything a failed write must leave as it was.

export interface EntryState {
  type: "file" | "dir" | "link" | "other";
  mode: number;
  uid: number;
  gid: number;
  ino: number;
  sha256?: string;
  link?: string;
}

/** Every entry of `dir` (not recursive) with its type, mode, owner, inode and content hash. */
export function snapshot(dir: string): Record<string, EntryState> {
  const state: Record<string, EntryState> = {};
  for (const name of fs.readdirSync(dir).sort()) {
    const path = join(dir, name);
    const stat = fs.lstatSync(path);
    const entry: EntryState = {
      type: stat.isFile() ? "file" : stat.isDirectory() ? "dir" : stat.isSymbolicLink() ? "link" : "other",
      mode: stat.mode & 0o7777,
      uid: stat.uid,
      gid: stat.gid,
      ino: stat.ino,
    };
    if (stat.isFile()) entry.sha256 = createHash("sha256").update(fs.readFileSync(path)).digest("hex");
    if (stat.isSymbolicLink()) entry.link = fs.readlinkSync(path);
    state[name] = entry;
  }
  return state;
}

export function modeOf(path: string): number {
  return fs.statSync(path).mode & 0o7777;
}

/** Names in `dir` that look like this library's temp files (hidden, ending in `.tmp`). */
export function tempResidue(dir: string): string[] {
  return fs.readdirSync(dir).filter((name) => name.startsWith(".") && name.endsWith(".tmp"));
}

// ---------------------------------------------------------------------------------------------
// Writes in a child process: as another user, under strace, or to be killed.

export const WRITE_CHILD = join(ROOT, "test", "fixtures", "write-child.ts");

/** One call of the library, described as JSON for `test/fixtures/write-child.ts`. */
export interface ChildWrite {
  fn: "atomicWriteText" | "atomicWriteBytes" | "atomicWriteTextAsync" | "atomicWriteBytesAsync" | "atomicWriteStream";
  path: string;
  /** Text for the text functions and the stream; base64 bytes for the bytes functions. */
  data: string;
  options?: Record<string, unknown>;
}

/** What the child reports: success, or the error's fields. */
export interface ChildResult {
  ok: boolean;
  name?: string;
  code?: string;
  message?: string;
  published?: boolean;
}

export interface ChildRun {
  /** Run as this uid and gid (root only), with no supplementary groups. */
  user?: number;
  /** Prefix the command, e.g. ["strace", "-f", "-o", log]. */
  wrap?: string[];
  env?: Record<string, string>;
  /** Kill the child after this long (it then reports no result, and writeInChild throws). */
  timeoutMs?: number;
}

export function writeInChild(request: ChildWrite, how: ChildRun = {}): ChildResult & { raw: SpawnSyncReturns<string> } {
  const argv = [...(how.wrap ?? []), ...asUser(how.user), BUN, WRITE_CHILD, JSON.stringify(request)];
  const raw = spawnSync(argv[0] as string, argv.slice(1), {
    encoding: "utf8",
    env: { ...process.env, HOME: tmpdir(), ...how.env },
    timeout: how.timeoutMs,
    killSignal: "SIGKILL",
  });
  const line = raw.stdout.trim().split("\n").pop() ?? "";
  try {
    return { ...(JSON.parse(line) as ChildResult), raw };
  } catch {
    throw new Error(`write child printed no result (status ${raw.status}): ${raw.stderr}`);
  }
}

/**
 * Runs `request` in a child under `strace -f -y` (descriptors shown as their paths) and returns the
 * calls in `syscalls`, one per line. Throws if the write fails.
 */
export function tracedWrite(request: ChildWrite, syscalls: string, env: Record<string, string> = {}): string[] {
  const log = join(tempDir("trace-"), "strace.log");
  const result = writeInChild(request, {
    wrap: ["strace", "-f", "-qq", "-y", "-o", log, "-e", `trace=${syscalls}`],
    env,
  });
  if (!result.ok) throw new Error(`the traced write failed: ${result.message}`);
  return fs.readFileSync(log, "utf8").split("\n");
}

/** strace arguments that fail `calls` as `fault` says (e.g. "error=EIO:when=1"), logging nothing. */
export function injecting(calls: string, fault: string): string[] {
  return ["strace", "-f", "-qq", "-o", "/dev/null", "-e", `trace=${calls}`, "-e", `inject=${calls}:${fault}`];
}

/** The request for `fn` writing `text` (the child takes base64 for the bytes functions). */
export function childRequest(
  fn: ChildWrite["fn"],
  path: string,
  text: string,
  options: Record<string, unknown> = {},
): ChildWrite {
  const data = fn.startsWith("atomicWriteBytes") ? Buffer.from(text).toString("base64") : text;
  return { fn, path, data, options };
}

/** setpriv arguments that drop root for the command that follows. */
export function asUser(uid: number | undefined): string[] {
  if (uid === undefined) return [];
  return ["setpriv", `--reuid=${uid}`, `--regid=${uid}`, "--clear-groups", "--"];
}

/**
 * Compiles cli.ts into a fresh `atomic-write` binary in a new temp dir and returns its path. Tests
 * build their own rather than trust dist/, which may predate the source under test.
 */
export function compileCli(): string {
  const binary = join(tempDir("bin-"), "atomic-write");
  // The flags of package.json's build:bin: the binary under test is the one that ships.
  run(BUN, ["build", "--compile", "--minify", "--bytecode", "--format=cjs", join(ROOT, "cli.ts"), "--outfile", binary]);
  return binary;
}

/**
 * The two temp protocols (anonymous O_TMPFILE inode, named hidden temp). SPEC wants both run on
 * every run, so suites repeat their write tests under each: `describe.each(TEMP_KINDS)` plus
 * `useTempKind(kind.env)` inside. The value is ATOMIC_WRITE_TMPFILE's, read by the library per call.
 */
export const TEMP_KINDS: { name: string; env: string | undefined }[] = [
  { name: "anonymous temps", env: undefined },
  { name: "named temps (ATOMIC_WRITE_TMPFILE=0)", env: "0" },
];

/** Sets ATOMIC_WRITE_TMPFILE for the tests of the enclosing describe block, and restores it after. */
export function useTempKind(env: string | undefined): void {
  const set = (value: string | undefined) => {
    if (value === undefined) delete process.env.ATOMIC_WRITE_TMPFILE;
    else process.env.ATOMIC_WRITE_TMPFILE = value;
  };
  let before: string | undefined;
  beforeAll(() => {
    before = process.env.ATOMIC_WRITE_TMPFILE;
    set(env);
  });
  afterAll(() => set(before));
}

// ---------------------------------------------------------------------------------------------
// Traces. `strace -f -y` names each descriptor's file, so the order of a protocol can be read off.

export interface Syscall {
  pid: string;
  name: string;
  args: string;
  result: string;
  /** Trace line where the call started and where it returned (they differ across threads). */
  start: number;
  end: number;
}

/** Parses `strace -f` output, joining `<unfinished ...>` calls with their `resumed` halves. */
export function parseTrace(text: string): Syscall[] {
  const calls: Syscall[] = [];
  const pending = new Map<string, Syscall>();
  text.split("\n").forEach((line, index) => {
    const head = /^(\d+)\s+(.*)$/.exec(line);
    if (!head) return;
    const pid = head[1] as string;
    const rest = head[2] as string;
    const resumed = /^<\.\.\. (\w+) resumed>(.*)\)\s+= (.*)$/.exec(rest);
    if (resumed) {
      const call = pending.get(pid);
      if (call && call.name === resumed[1]) {
        call.args += resumed[2];
        call.result = resumed[3] as string;
        call.end = index;
        pending.delete(pid);
      }
      return;
    }
    const unfinished = /^(\w+)\((.*) <unfinished \.\.\.>$/.exec(rest);
    if (unfinished) {
      const call = {
        pid,
        name: unfinished[1] as string,
        args: unfinished[2] as string,
        result: "",
        start: index,
        end: -1,
      };
      pending.set(pid, call);
      calls.push(call);
      return;
    }
    const whole = /^(\w+)\((.*)\)\s+= (.*)$/.exec(rest);
    if (whole) {
      calls.push({
        pid,
        name: whole[1] as string,
        args: whole[2] as string,
        result: whole[3] as string,
        start: index,
        end: index,
      });
    }
  });
  return calls;
}

/**
 * The file `strace -y` shows for a call's first argument, a descriptor: `5</dir/file>`, or for an
 * unlinked or still unnamed (O_TMPFILE) inode `5</dir/#123>(deleted)`, returned as "/dir/#123 (deleted)".
 */
export function fdFile(call: Syscall): string | undefined {
  const match = /^\d+<(.*?)>(\(deleted\))?(?:,|$)/.exec(call.args);
  if (!match) return undefined;
  return match[2] ? `${match[1]} (deleted)` : match[1];
}

// ---------------------------------------------------------------------------------------------
// Calls that must fail, and files planted before a write.

/** What a failed write reports: a SystemError's fields, or an argument error's name and message. */
export interface Failure {
  name?: string;
  code?: string;
  message?: string;
  published?: unknown;
  renamed?: unknown;
}

/**
 * A call that must fail: a sync function throws, an async one returns a promise that rejects (and
 * never throws, not even for bad arguments: SPEC). `label` names the function in a test's failure.
 */
export async function failureOf(label: string, isAsync: boolean, call: () => unknown): Promise<Failure> {
  let returned: unknown;
  try {
    returned = call();
  } catch (error) {
    if (isAsync) throw new Error(`${label} threw synchronously instead of rejecting: ${error}`);
    expect(error).toBeInstanceOf(Error);
    return error as Failure;
  }
  if (!isAsync) throw new Error(`${label} returned instead of throwing`);
  expect(returned).toBeInstanceOf(Promise);
  try {
    await returned;
  } catch (error) {
    expect(error).toBeInstanceOf(Error);
    return error as Failure;
  }
  throw new Error(`${label} resolved instead of rejecting`);
}

/** A regular file with exactly these bytes and this mode (chmod, so no umask in the way). */
export function plant(path: string, contents: string | Uint8Array, mode = 0o644): void {
  fs.writeFileSync(path, contents);
  fs.chmodSync(path, mode);
}

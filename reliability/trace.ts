/**
 * Runs a writer under `strace -f -y -xx` and turns the trace into the logical file-system
 * operations of the crash-state model (ALICE's "logical operations"): create, write, truncate,
 * chmod/chown, fsync of a file, fsync of a directory, rename, link, unlink.
 *
 * Only the experiment's directory is modelled; calls elsewhere (Bun loading modules, the payload
 * being read, stdout) are ignored. A call that touches the directory in a way the model does not
 * know (mmap for writing, fallocate, copy_file_range, RENAME_EXCHANGE, ...) is reported as
 * unmodelled, which fails the exploration rather than quietly passing it.
 */
import * as fs from "node:fs";
import { basename, dirname, join, normalize } from "node:path";
import { type Command, spawnCommand } from "./common.ts";

/** Every system call that can change a file's contents, metadata, name or durability. */
export const TRACED = [
  "open",
  "openat",
  "openat2",
  "creat",
  "write",
  "pwrite64",
  "writev",
  "pwritev",
  "pwritev2",
  "lseek",
  "ftruncate",
  "truncate",
  "fallocate",
  "fchmod",
  "fchmodat",
  "chmod",
  "fchown",
  "fchownat",
  "chown",
  "lchown",
  "fsync",
  "fdatasync",
  "sync",
  "syncfs",
  "rename",
  "renameat",
  "renameat2",
  "link",
  "linkat",
  "unlink",
  "unlinkat",
  "close",
  "dup",
  "dup2",
  "dup3",
  "fcntl",
  "copy_file_range",
  "sendfile",
  "mmap",
  "splice",
  // Writes submitted through io_uring would not appear as system calls of their own.
  "io_uring_enter",
];

// ---------------------------------------------------------------------------------------------
// Logical operations. `covers` of a sync is the number of operations that had completed when the
// sync was entered: it forces those (a write finishing on another thread meanwhile is not covered).

interface Base {
  /** What the program called, for reports. */
  call: string;
}
export type Op = Base &
  (
    | { kind: "create"; dir: string; name: string; ino: number; mode: number }
    | { kind: "anon"; ino: number; mode: number }
    | { kind: "write"; ino: number; offset: number; data: Buffer }
    | { kind: "truncate"; ino: number; size: number }
    | { kind: "chmod"; ino: number; mode: number }
    | { kind: "chown"; ino: number }
    | { kind: "fsync"; ino: number; covers: number; dataOnly: boolean }
    | { kind: "fsyncDir"; dir: string; covers: number }
    | { kind: "sync"; covers: number }
    | { kind: "rename"; dir: string; from: string; toDir: string; to: string; ino: number }
    | { kind: "link"; dir: string; name: string; ino: number }
    | { kind: "unlink"; dir: string; name: string; ino: number }
  );

export interface Traced {
  ops: Op[];
  unmodelled: string[];
  /** How many raw calls the trace held. */
  calls: number;
}

export interface RawCall {
  pid: number;
  name: string;
  args: string[];
  ret: number;
  /** The path strace printed for a returned descriptor. */
  retPath?: string;
  error?: string;
  injected: boolean;
  /** How many logical operations had completed when this call was entered. */
  startOps: number;
}

export interface ModelStart {
  /** The directory being modelled (the target's). */
  dir: string;
  /** Its entries before the write, each with an inode number the explorer knows. */
  entries: Map<string, number>;
  /** Size of each of those inodes (for O_APPEND). */
  sizes: Map<number, number>;
  /** The traced process's working directory, for relative paths of rename/unlink. */
  cwd: string;
  umask: number;
}

export function straceArgv(log: string, extra: string[] = []): string[] {
  return [
    "strace",
    "-f",
    "-y",
    "-xx",
    "-s",
    String(1 << 24),
    "-qq",
    "-o",
    log,
    "-e",
    `trace=${TRACED.join(",")}`,
    ...extra,
  ];
}

/** Runs `command` under strace and interprets the trace against `start`. */
export function traceRun(command: Command, log: string, start: ModelStart) {
  const raw = spawnCommand(command, straceArgv(log), 120_000);
  const text = fs.readFileSync(log, "latin1");
  return { raw, traced: interpret(text, start) };
}

// ---------------------------------------------------------------------------------------------
// Parsing strace's lines.

const LINE = /^(\d+)\s+(.*)$/;

/** Splits "name(a, b, c) = ret rest" into its parts; strings, <paths>, [] and {} are kept whole. */
function splitCall(text: string): { name: string; args: string[]; result: string } | undefined {
  const open = text.indexOf("(");
  if (open <= 0) return undefined;
  const name = text.slice(0, open);
  if (!/^[a-z0-9_]+$/.test(name)) return undefined;
  const args: string[] = [];
  let depth = 0;
  let start = open + 1;
  let i = open + 1;
  for (; i < text.length; i++) {
    const c = text[i];
    if (c === '"') {
      i = text.indexOf('"', i + 1); // with -xx a string holds only \xNN escapes, never a bare quote
      if (i < 0) return undefined;
    } else if (c === "<") {
      i = text.indexOf(">", i + 1);
      if (i < 0) return undefined;
    } else if (c === "(" || c === "[" || c === "{") depth++;
    else if (c === "]" || c === "}") depth--;
    else if (c === ")") {
      if (depth === 0) break;
      depth--;
    } else if (c === "," && depth === 0) {
      args.push(text.slice(start, i).trim());
      start = i + 1;
    }
  }
  const last = text.slice(start, i).trim();
  if (last.length > 0 || args.length > 0) args.push(last);
  const eq = text.indexOf("=", i);
  if (eq < 0) return undefined;
  return { name, args, result: text.slice(eq + 1).trim() };
}

export function decodeString(token: string): Buffer {
  const end = token.indexOf('"', 1);
  if (token[0] !== '"' || end < 0) throw new Error(`not an strace string: ${token.slice(0, 60)}`);
  if (token.startsWith("...", end + 1)) throw new Error("strace cut a string short");
  return hexBytes(token.slice(1, end));
}

/** The path in an annotation like `5</tmp/x>` or `AT_FDCWD</tmp>`, decoded. */
export function annotation(token: string): string | undefined {
  const start = token.indexOf("<");
  const end = token.indexOf(">", start + 1);
  if (start < 0 || end < 0) return undefined;
  const inner = token.slice(start + 1, end);
  // Only paths are hex-escaped under -xx; "pipe:[123]" and the like are not paths.
  if (!inner.startsWith("\\x")) return undefined;
  return hexBytes(inner).toString("utf8");
}

/** Decodes strace -xx text ("\\x2f\\x74..."), where every byte is escaped. */
function hexBytes(escaped: string): Buffer {
  const hex = escaped.replaceAll("\\x", "");
  if (hex.length * 2 !== escaped.length) throw new Error(`not strace -xx text: ${escaped.slice(0, 60)}`);
  return Buffer.from(hex, "hex");
}

function fdNumber(token: string): number {
  return Number.parseInt(token, 10);
}

function parseResult(result: string): { ret: number; retPath?: string; error?: string; injected: boolean } {
  const injected = result.includes("(INJECTED)");
  const match = /^(-?\d+|0x[0-9a-f]+)/.exec(result);
  const ret = match ? Number(match[1]) : Number.NaN;
  const error = ret < 0 ? /^-1 ([A-Z0-9]+)/.exec(result)?.[1] : undefined;
  return { ret, retPath: annotation(result), error, injected };
}

// ---------------------------------------------------------------------------------------------
// Interpretation: a volatile model of the directory (everything applied) tells which inode each
// name and descriptor refers to at each moment.

interface Description {
  ino: number;
  offset: number;
  append: boolean;
}
type FdRef = { kind: "file"; d: Description } | { kind: "dir"; dir: string } | { kind: "outside" };

export function interpret(text: string, start: ModelStart): Traced {
  const ops: Op[] = [];
  const unmodelled: string[] = [];
  const names = new Map(start.entries);
  const sizes = new Map(start.sizes);
  let nextIno = Math.max(0, ...names.values()) + 1;
  const fds = new Map<number, FdRef>();
  const pending = new Map<number, { text: string; startOps: number }>();
  let calls = 0;

  const inDir = (path: string) => dirname(path) === start.dir;
  const label = (path: string) => basename(path);
  const absolute = (dirToken: string | undefined, path: string) => {
    if (path.startsWith("/")) return normalize(path);
    const base = dirToken === undefined ? start.cwd : (annotation(dirToken) ?? start.cwd);
    return normalize(join(base, path));
  };
  const refOf = (token: string): FdRef => fds.get(fdNumber(token)) ?? fromAnnotation(token);
  // A descriptor opened before tracing began (none touch the directory, but be safe).
  const fromAnnotation = (token: string): FdRef => {
    const path = annotation(token);
    if (path === undefined) return { kind: "outside" };
    if (path === start.dir) return { kind: "dir", dir: path };
    if (inDir(path)) {
      unmodelled.push(`descriptor ${token} was opened before the trace began`);
    }
    return { kind: "outside" };
  };
  const emit = (op: Op) => {
    ops.push(op);
  };
  const bump = (ino: number, end: number) => sizes.set(ino, Math.max(sizes.get(ino) ?? 0, end));

  const handle = (call: RawCall) => {
    const { name, args, ret } = call;
    const a = (i: number) => args[i] ?? "";
    const failed = !(ret >= 0);
    if (failed) return;
    switch (name) {
      case "open":
      case "openat":
      case "creat": {
        const path =
          name === "openat"
            ? absolute(a(0), decodeString(a(1)).toString("utf8"))
            : absolute(undefined, decodeString(a(0)).toString("utf8"));
        const flags = name === "creat" ? "O_WRONLY|O_CREAT|O_TRUNC" : name === "openat" ? a(2) : a(1);
        const modeArg = name === "creat" ? a(1) : name === "openat" ? a(3) : a(2);
        const flag = (f: string) => flags.split("|").includes(f);
        if (flag("O_TMPFILE")) {
          if (path !== start.dir) {
            fds.set(ret, { kind: "outside" });
            return;
          }
          const ino = nextIno++;
          const mode = Number.parseInt(modeArg, 8) & ~start.umask;
          sizes.set(ino, 0);
          emit({ kind: "anon", ino, mode, call: `open(O_TMPFILE in ${label(path)}/)` });
          fds.set(ret, { kind: "file", d: { ino, offset: 0, append: false } });
          return;
        }
        const real = call.retPath ?? path;
        if (real === start.dir || !inDir(real)) {
          fds.set(ret, real === start.dir ? { kind: "dir", dir: real } : { kind: "outside" });
          return;
        }
        const entry = label(real);
        let ino = names.get(entry);
        if (ino === undefined) {
          if (!flag("O_CREAT")) throw new Error(`open of ${real} succeeded but the model has no such file`);
          ino = nextIno++;
          const mode = Number.parseInt(modeArg, 8) & ~start.umask;
          names.set(entry, ino);
          sizes.set(ino, 0);
          emit({ kind: "create", dir: start.dir, name: entry, ino, mode, call: `creat(${entry})` });
        } else if (flag("O_TRUNC") && !flag("O_RDONLY")) {
          sizes.set(ino, 0);
          emit({ kind: "truncate", ino, size: 0, call: `open(${entry}, O_TRUNC)` });
        }
        fds.set(ret, { kind: "file", d: { ino, offset: 0, append: flag("O_APPEND") } });
        return;
      }
      case "openat2":
        if (call.retPath !== undefined && (call.retPath === start.dir || inDir(call.retPath))) {
          unmodelled.push("openat2");
        }
        return;
      case "write":
      case "pwrite64":
      case "writev":
      case "pwritev":
      case "pwritev2": {
        const ref = refOf(a(0));
        if (ref.kind !== "file") return;
        const vector = name.includes("writev");
        const whole = vector
          ? Buffer.concat([...a(1).matchAll(/iov_base=("[^"]*")/g)].map((m) => decodeString(m[1] as string)))
          : decodeString(a(1));
        const data = whole.subarray(0, ret);
        const positioned = name === "pwrite64" || name === "pwritev" || name === "pwritev2";
        let offset: number;
        if (positioned) offset = Number(a(3));
        else {
          offset = ref.d.append ? (sizes.get(ref.d.ino) ?? 0) : ref.d.offset;
          ref.d.offset = offset + ret;
        }
        bump(ref.d.ino, offset + ret);
        emit({ kind: "write", ino: ref.d.ino, offset, data, call: `${name}(${ret} bytes at ${offset})` });
        return;
      }
      case "lseek": {
        const ref = refOf(a(0));
        if (ref.kind === "file") ref.d.offset = ret;
        return;
      }
      case "ftruncate":
      case "truncate": {
        let ino: number | undefined;
        if (name === "ftruncate") {
          const ref = refOf(a(0));
          if (ref.kind === "file") ino = ref.d.ino;
        } else {
          const path = absolute(undefined, decodeString(a(0)).toString("utf8"));
          if (inDir(path)) ino = names.get(label(path));
        }
        if (ino === undefined) return;
        const size = Number(a(1));
        sizes.set(ino, size);
        emit({ kind: "truncate", ino, size, call: `${name}(${size})` });
        return;
      }
      case "fchmod":
      case "fchmodat":
      case "chmod":
      case "fchown":
      case "fchownat":
      case "chown":
      case "lchown": {
        let ino: number | undefined;
        let modeToken: string;
        if (name === "fchmod" || name === "fchown") {
          const ref = refOf(a(0));
          if (ref.kind === "file") ino = ref.d.ino;
          modeToken = a(1);
        } else {
          const at = name.endsWith("at");
          const path = absolute(at ? a(0) : undefined, decodeString(a(at ? 1 : 0)).toString("utf8"));
          if (inDir(path)) ino = names.get(label(path));
          modeToken = a(at ? 2 : 1);
        }
        if (ino === undefined) return;
        if (name.includes("chmod")) {
          const mode = Number.parseInt(modeToken, 8);
          emit({ kind: "chmod", ino, mode, call: `${name}(0${mode.toString(8)})` });
        } else emit({ kind: "chown", ino, call: name });
        return;
      }
      case "fsync":
      case "fdatasync": {
        const ref = refOf(a(0));
        if (ref.kind === "file") {
          emit({
            kind: "fsync",
            ino: ref.d.ino,
            covers: call.startOps,
            dataOnly: name === "fdatasync",
            call: `${name}(file)`,
          });
        } else if (ref.kind === "dir") {
          emit({ kind: "fsyncDir", dir: ref.dir, covers: call.startOps, call: `${name}(directory)` });
        }
        return;
      }
      case "sync":
        emit({ kind: "sync", covers: call.startOps, call: "sync()" });
        return;
      case "syncfs": {
        if (refOf(a(0)).kind !== "outside") emit({ kind: "sync", covers: call.startOps, call: "syncfs()" });
        return;
      }
      case "rename":
      case "renameat":
      case "renameat2": {
        const at = name !== "rename";
        const from = absolute(at ? a(0) : undefined, decodeString(a(at ? 1 : 0)).toString("utf8"));
        const to = absolute(at ? a(2) : undefined, decodeString(a(at ? 3 : 1)).toString("utf8"));
        if (!inDir(from) && !inDir(to)) return;
        if (!inDir(from) || !inDir(to) || (name === "renameat2" && a(4).includes("RENAME_EXCHANGE"))) {
          unmodelled.push(`${name} ${from} -> ${to}`);
          return;
        }
        const ino = names.get(label(from));
        if (ino === undefined) throw new Error(`rename of ${from} succeeded but the model has no such file`);
        names.delete(label(from));
        names.set(label(to), ino);
        emit({
          kind: "rename",
          dir: start.dir,
          from: label(from),
          toDir: start.dir,
          to: label(to),
          ino,
          call: `rename(${label(from)} -> ${label(to)})`,
        });
        return;
      }
      case "link":
      case "linkat": {
        const at = name === "linkat";
        const oldRaw = decodeString(a(at ? 1 : 0)).toString("utf8");
        const to = absolute(at ? a(2) : undefined, decodeString(a(at ? 3 : 1)).toString("utf8"));
        if (!inDir(to)) return;
        let ino: number | undefined;
        const viaProc = /^\/proc\/(?:self|\d+)\/fd\/(\d+)$/.exec(oldRaw);
        if (viaProc) {
          const ref = fds.get(Number(viaProc[1]));
          if (ref?.kind === "file") ino = ref.d.ino;
        } else if (at && oldRaw === "" && a(4).includes("AT_EMPTY_PATH")) {
          const ref = refOf(a(0));
          if (ref.kind === "file") ino = ref.d.ino;
        } else {
          const from = absolute(at ? a(0) : undefined, oldRaw);
          if (inDir(from)) ino = names.get(label(from));
        }
        if (ino === undefined) {
          unmodelled.push(`${name} of a file the model does not know, to ${to}`);
          return;
        }
        names.set(label(to), ino);
        emit({ kind: "link", dir: start.dir, name: label(to), ino, call: `linkat(-> ${label(to)})` });
        return;
      }
      case "unlink":
      case "unlinkat": {
        const at = name === "unlinkat";
        const path = absolute(at ? a(0) : undefined, decodeString(a(at ? 1 : 0)).toString("utf8"));
        if (!inDir(path)) return;
        const ino = names.get(label(path));
        if (ino === undefined) return;
        names.delete(label(path));
        emit({ kind: "unlink", dir: start.dir, name: label(path), ino, call: `unlink(${label(path)})` });
        return;
      }
      case "close":
        fds.delete(fdNumber(a(0)));
        return;
      case "dup":
      case "dup2":
      case "dup3":
      case "fcntl": {
        if (name === "fcntl" && !a(1).startsWith("F_DUPFD")) return;
        const ref = fds.get(fdNumber(a(0)));
        if (ref) fds.set(ret, ref);
        return;
      }
      case "fallocate":
      case "copy_file_range":
      case "sendfile": {
        const target = name === "fallocate" ? a(0) : name === "sendfile" ? a(0) : a(2);
        if (refOf(target).kind !== "outside") unmodelled.push(`${name} on ${annotation(target)}`);
        return;
      }
      case "splice": {
        if (refOf(a(2)).kind !== "outside") unmodelled.push(`splice into ${annotation(a(2))}`);
        return;
      }
      case "io_uring_enter":
        unmodelled.push("io_uring_enter: writes through io_uring are invisible to this trace");
        return;
      case "mmap": {
        if (!a(3).includes("MAP_SHARED") || !a(2).includes("PROT_WRITE")) return;
        if (refOf(a(4)).kind !== "outside") unmodelled.push(`shared writable mmap of ${annotation(a(4))}`);
        return;
      }
    }
  };

  for (const line of text.split("\n")) {
    const match = LINE.exec(line);
    if (!match) continue;
    const pid = Number(match[1]);
    let body = match[2] as string;
    if (body.startsWith("---") || body.startsWith("+++")) continue;
    if (body.endsWith("<unfinished ...>")) {
      pending.set(pid, { text: body.slice(0, -"<unfinished ...>".length).trimEnd(), startOps: ops.length });
      continue;
    }
    let startOps = ops.length;
    const resumed = /^<\.\.\. [a-z0-9_]+ resumed>\s?(.*)$/.exec(body);
    if (resumed) {
      const before = pending.get(pid);
      pending.delete(pid);
      if (!before) continue;
      body = `${before.text}${resumed[1]}`;
      startOps = before.startOps;
    }
    const parts = splitCall(body);
    if (!parts) continue;
    calls++;
    const result = parseResult(parts.result);
    handle({ pid, name: parts.name, args: parts.args, ...result, startOps });
  }
  return { ops, unmodelled, calls };
}

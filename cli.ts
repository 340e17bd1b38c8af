#!/usr/bin/env bun
/**
 * atomic-write [--mode OCTAL] <path>: standard input, as raw bytes, to <path>, atomically.
 *
 * Exit codes: 0 written and durable; 1 nothing written; 2 usage error;
 * 3 written, but the directory fsync failed (durability unconfirmed).
 */
// Only what --help and --version need is loaded up front: the library (and node:fs, bun:ffi) is
// imported when there is something to write.
import type { AtomicWriteError } from "./index.ts";
import { version } from "./package.json";

const USAGE = `Usage: atomic-write [--mode OCTAL] <path>

Reads standard input until EOF and writes it to <path> atomically: readers see the old
file or the whole new one, never a mix, and a crash or power loss leaves one or the other.

Options:
  -m, --mode OCTAL  permission bits of the new file (e.g. 644); default: keep the
                    existing file's, or what a plain create would give
  -h, --help        show this help
  -V, --version     show the version

Exit status: 0 written and durable; 1 nothing written; 2 usage error;
             3 written, but durability unconfirmed (the directory fsync failed).
`;

type Command = { kind: "write"; path: string; mode?: number } | { kind: "help" } | { kind: "version" };

class UsageError extends Error {}

function parse(args: string[]): Command {
  let mode: number | undefined;
  const paths: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i] as string;
    if (arg === "--") {
      paths.push(...args.slice(i + 1));
      break;
    }
    if (arg === "-h" || arg === "--help") return { kind: "help" };
    if (arg === "-V" || arg === "--version") return { kind: "version" };
    if (arg === "-m" || arg === "--mode" || arg.startsWith("--mode=")) {
      const value = arg.startsWith("--mode=") ? arg.slice(7) : args[++i];
      if (value === undefined) throw new UsageError("--mode needs an octal value, e.g. --mode 644");
      mode = parseMode(value);
    } else if (arg.startsWith("-") && arg !== "-") {
      throw new UsageError(`unknown option ${arg}`);
    } else {
      paths.push(arg);
    }
  }
  if (paths.length !== 1) throw new UsageError(paths.length === 0 ? "missing <path>" : "expected exactly one <path>");
  if (paths[0] === "") throw new UsageError("<path> must not be empty");
  return { kind: "write", path: paths[0] as string, mode };
}

/**
 * `bun cli.ts -- --help` hands the script only "--help": Bun takes a "--" right after a script's
 * name for its own, where the compiled binary sees every argument. So from source, when an argument
 * starts with a dash, they are read again as typed (Linux keeps them in /proc/self/cmdline) and, if
 * Bun removed a "--", parsed as typed; unless only the arguments as given parse: `bun cli.ts -- --
 * -name`, the form that works where they cannot be read again.
 */
function parseAsTyped(args: string[]): Command {
  const typed = !COMPILED && args.some((arg) => arg.startsWith("-")) ? withBunsDoubleDash(args) : undefined;
  const command = (typed && parsed(typed)) ?? parse(args);
  if (command.kind === "write") refuseUndecodable(command.path);
  return command;
}

/** The compiled binary's script lives in Bun's embedded file system. */
const COMPILED = /^(\/\$bunfs\/|[A-Za-z]:[\\/]~BUN[\\/])/.test(process.argv[1] ?? "");

function parsed(args: string[]): Command | undefined {
  try {
    return parse(args);
  } catch (error) {
    if (error instanceof UsageError) return undefined;
    throw error;
  }
}

function withBunsDoubleDash(args: string[]): string[] | undefined {
  const raw = typedArguments()?.map((arg) => arg.toString("utf8"));
  if (raw === undefined) return undefined; // not Linux, or no /proc: as Bun gave them
  const tail = raw.slice(-(args.length + 1));
  const removed = tail.indexOf("--");
  if (removed < 0 || tail.length !== args.length + 1) return undefined;
  const without = tail.filter((_, index) => index !== removed);
  return without.every((arg, index) => arg === args[index]) ? tail : undefined;
}

/**
 * Bun decodes the arguments as UTF-8, and a byte that is not UTF-8 becomes U+FFFD: the path would
 * then name another file, which the write would create or replace. A path typed with such bytes is
 * refused, as the library refuses a Buffer path that is not UTF-8 (one holding U+FFFD itself is fine).
 */
function refuseUndecodable(path: string): void {
  if (!path.includes("\uFFFD")) return;
  const { isUtf8 } = process.getBuiltinModule("node:buffer") as typeof import("node:buffer");
  if (typedArguments()?.some((arg) => !isUtf8(arg) && arg.toString("utf8") === path)) {
    throw new UsageError(`<path> is not valid UTF-8, so '${path}' would name another file`);
  }
}

/** The arguments as typed, as bytes (Linux), or undefined. */
function typedArguments(): Buffer[] | undefined {
  let cmdline: Buffer;
  try {
    const fs = process.getBuiltinModule("node:fs") as typeof import("node:fs");
    cmdline = fs.readFileSync("/proc/self/cmdline");
  } catch {
    return undefined;
  }
  const args: Buffer[] = [];
  for (let start = 0; start < cmdline.length; ) {
    const nul = cmdline.indexOf(0, start);
    const end = nul < 0 ? cmdline.length : nul;
    args.push(cmdline.subarray(start, end));
    start = end + 1;
  }
  return args;
}

function parseMode(text: string): number {
  const digits = text.replace(/^0o/i, "");
  // Any number of leading zeros, as chmod takes them: 04755 is how a setuid mode is often written.
  const mode = /^[0-7]+$/.test(digits) ? Number.parseInt(digits, 8) : Number.NaN;
  if (!(mode <= 0o7777)) throw new UsageError(`--mode must be octal from 0 to 7777, got '${text}'`);
  return mode;
}

const STDIN = 0;
const CHUNK = 1024 * 1024;
const F_SETPIPE_SZ = 1031; // fcntl command (Linux)

/**
 * Standard input in chunks of one reused buffer: memory stays bounded whatever the input size. A
 * pipe hands over at most 64 KiB a read, so the buffer is filled first: one write per MiB, not 16.
 */
function* standardInput(readSync: ReadSync): Generator<Uint8Array> {
  const buffer = Buffer.allocUnsafe(CHUNK);
  for (let first = true; ; first = false) {
    let filled = 0;
    let ended = false;
    while (filled < CHUNK) {
      const count = readSome(readSync, buffer, filled);
      if (count === 0) {
        ended = true;
        break;
      }
      filled += count;
    }
    if (ended) {
      if (filled > 0) yield buffer.subarray(0, filled);
      return;
    }
    if (first) widenPipe(); // a large input: worth the cost of loading the call
    yield buffer;
  }
}

type ReadSync = typeof import("node:fs").readSync;

function readSome(readSync: ReadSync, buffer: Buffer, offset: number): number {
  for (;;) {
    try {
      return readSync(STDIN, buffer, offset, buffer.length - offset, null);
    } catch (error) {
      // An inherited non-blocking stdin has nothing yet: wait a moment rather than fail.
      if ((error as NodeJS.ErrnoException).code !== "EAGAIN") {
        (error as Error).message = `cannot read standard input: ${(error as Error).message}`;
        throw error;
      }
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1);
    }
  }
}

/**
 * A pipe holds 64 KiB by default, so the writer upstream stalls whenever this process is busy
 * writing, and each read brings at most 64 KiB. A 1 MiB pipe (the unprivileged maximum) lets it
 * run ahead meanwhile (the CLI rows of `bun bench/run.ts` are faster with it). Best effort: stdin
 * may be a file or a terminal, or libc out of reach; it is only slower then.
 */
function widenPipe(): void {
  if (process.platform !== "linux") return;
  try {
    const { dlopen, FFIType } = process.getBuiltinModule("bun:ffi") as typeof import("bun:ffi");
    const { symbols } = dlopen("libc.so.6", {
      fcntl: { args: [FFIType.i32, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
    });
    symbols.fcntl(STDIN, F_SETPIPE_SZ, CHUNK);
  } catch {
    // Only slower without it.
  }
}

async function main(args: string[]): Promise<number> {
  let command: Command;
  try {
    command = parseAsTyped(args);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    say(`atomic-write: ${error.message} (try 'atomic-write --help')\n`);
    return 2;
  }
  if (command.kind === "help") return print(USAGE);
  if (command.kind === "version") return print(`atomic-write ${version}\n`);
  const [{ atomicWriteStream }, { readSync }] = await Promise.all([import("./index.ts"), import("node:fs")]);
  try {
    await atomicWriteStream(command.path, standardInput(readSync), { mode: command.mode });
    return 0;
  } catch (error) {
    const failure = error as AtomicWriteError;
    const text = failure.message ?? String(error);
    // The library's message of a published error names the path and says durability is unconfirmed.
    if (failure.published) {
      say(`atomic-write: ${text}\n`);
      return 3;
    }
    // The library's own errors name the path quoted; a failed read of stdin does not.
    const named = text.includes(`'${command.path}'`) ? text : `'${command.path}': ${text}`;
    say(`atomic-write: ${named}; nothing was written\n`);
    return 1;
  }
}

/**
 * Help and version go out through Bun.write, which reports a failed write (a full disk): the
 * console drops it, and GNU tools then exit 1. Neither it nor the console costs what the set-up of
 * process.stdout or loading node:fs would at start-up.
 */
async function print(text: string): Promise<number> {
  try {
    await Bun.write(Bun.stdout, text);
    return 0;
  } catch (error) {
    say(`atomic-write: cannot write standard output: ${(error as Error).message}\n`);
    return 1;
  }
}

/**
 * An error is one line on stderr, even when the path or the reason holds a line break: control
 * characters are shown escaped, as in a JSON string.
 */
function say(text: string): void {
  console.error(escapeControls(text.endsWith("\n") ? text.slice(0, -1) : text));
}

function escapeControls(text: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what it escapes
  return text.replace(/[\u0000-\u001f\u007f]/g, (control) => JSON.stringify(control).slice(1, -1));
}

// No top-level await: the compiled binary is CommonJS bytecode (see package.json "build:bin").
main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});

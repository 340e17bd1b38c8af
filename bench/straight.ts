/**
 * The protocols of index.ts written straight-line in TypeScript over bun:ffi: the same system
 * calls in the same order (O_TMPFILE, or a named temp; both give an existing target's owner and
 * group to the temp, as index.ts does and the named C floor does not), with no shared plan, no
 * drivers and no error reporting beyond the errno. A string is encoded in pieces into one reused
 * buffer by a bare loop, as index.ts does. It is what a JavaScript writer pays for the runtime and
 * its FFI alone; the gap between it and the C floor is the runtime's.
 *
 * `planWrite` makes the same calls, but yielded one at a time by a generator and made by
 * a driver: the least any library pays for writing the protocol once for a sync and an async
 * driver, as index.ts does. The gap between it and the library is the cost of the library's own
 * structure (nested steps, validation, clean-up, error reports).
 */
import { dlopen, FFIType, read } from "bun:ffi";

const O_WRONLY = 0o1;
const O_CREAT = 0o100;
const O_EXCL = 0o200;
const O_NOFOLLOW = 0o400000;
const O_DIRECTORY = 0o200000;
const O_CLOEXEC = 0o2000000;
const O_TMPFILE = 0o20200000;
const AT_FDCWD = -100;
const AT_SYMLINK_NOFOLLOW = 0x100;
const AT_EMPTY_PATH = 0x1000;
const STATX_BASIC_STATS = 0x7ff;
const ENOENT = 2;
// struct statx: the old file's owner and group, which index.ts gives every temp (fchown)
const STX_UID = 20;
const STX_GID = 24;

type Libc = ReturnType<typeof open>;

function open() {
  const { i32, u32, u64, ptr } = FFIType;
  return dlopen("libc.so.6", {
    statx: { args: [i32, ptr, i32, u32, ptr], returns: i32 },
    open: { args: [ptr, i32, u32], returns: i32 },
    write: { args: [i32, ptr, u64], returns: i32 },
    fchown: { args: [i32, u32, u32], returns: i32 },
    fchmod: { args: [i32, u32], returns: i32 },
    fsync: { args: [i32], returns: i32 },
    close: { args: [i32], returns: i32 },
    rename: { args: [ptr, ptr], returns: i32 },
    linkat: { args: [i32, ptr, i32, ptr, i32], returns: i32 },
    __errno_location: { args: [], returns: ptr },
  });
}

let libc: Libc | undefined;
const stat = Buffer.alloc(256);
const EMPTY = Buffer.from([0]);
const pieces = Buffer.allocUnsafe(768 * 1024); // as index.ts: 256 Ki UTF-16 units of UTF-8 at most
const encoder = new TextEncoder();
let random = "";
let randomAt = 0;

function errno(c: Libc["symbols"]): number {
  return read.i32(c.__errno_location() as NonNullable<ReturnType<typeof c.__errno_location>>, 0);
}

function check(c: Libc["symbols"], result: number, what: string): number {
  if (result < 0) throw new Error(`straight-line writer: ${what} failed, errno ${errno(c)}`);
  return result;
}

/** 48 random bits as hex: drawn from the CSPRNG and turned into hex in batches, as index.ts does. */
function randomHex(): string {
  if (randomAt + 12 > random.length) {
    random = Buffer.from(crypto.getRandomValues(new Uint8Array(6 * 256)).buffer).toString("hex");
    randomAt = 0;
  }
  randomAt += 12;
  return random.slice(randomAt - 12, randomAt);
}

function writeAll(c: Libc["symbols"], fd: number, data: Uint8Array, length = data.byteLength): void {
  for (let offset = 0; offset < length; ) {
    const piece = offset === 0 && length === data.byteLength ? data : data.subarray(offset, length);
    offset += check(c, c.write(fd, piece, piece.byteLength), "write");
  }
}

/**
 * UTF-8, a piece at a time, as index.ts does it: a slice never ends between the two halves of a
 * surrogate pair, and once a slice did not fit the buffer, slices are sized to what did fit
 * (encodeInto is several times slower when it runs out of room).
 */
function writeText(c: Libc["symbols"], fd: number, text: string): void {
  let span = pieces.byteLength;
  for (let start = 0; start < text.length; ) {
    const { read, written, short } = encodePiece(text, start, span);
    writeAll(c, fd, pieces, written);
    if (short) span = Math.max(read, 1024);
    start += read;
  }
}

/** Encodes at most `span` units of `text` from `start` into `pieces`; `short` when not all fit. */
function encodePiece(text: string, start: number, span: number): { read: number; written: number; short: boolean } {
  let end = Math.min(start + span, text.length);
  const last = text.charCodeAt(end - 1);
  if (end < text.length && last >= 0xd800 && last <= 0xdbff) end--;
  const slice = start === 0 && end === text.length ? text : text.slice(start, end);
  const { read, written } = encoder.encodeInto(slice, pieces);
  return { read, written, short: start + read < end };
}

/**
 * Three reused buffers for the names, as index.ts reuses its own: with a fresh Buffer per name,
 * this writer was slower than the library.
 */
const nameBuffers = [Buffer.allocUnsafe(16 * 1024), Buffer.allocUnsafe(16 * 1024), Buffer.allocUnsafe(16 * 1024)];

function cString(slot: 0 | 1 | 2, text: string): Buffer {
  const buffer = nameBuffers[slot] as Buffer;
  buffer[buffer.write(text)] = 0;
  return buffer;
}

/** The file names a write uses, NUL-terminated for libc (valid until the next write). */
function namesOf(path: string): { target: Buffer; directory: Buffer; temp: Buffer } {
  const slash = path.lastIndexOf("/");
  const directory = slash <= 0 ? "/" : path.slice(0, slash);
  return {
    target: cString(0, path),
    directory: cString(1, directory),
    temp: cString(2, `${directory}/.${path.slice(slash + 1, slash + 65)}.${randomHex()}.tmp`),
  };
}

/** The target's permission bits after its statx (`found` its result), or undefined where it is absent. */
function modeOf(c: Libc["symbols"], found: number): number | undefined {
  if (found === 0) return stat.readUInt16LE(28) & 0o7777;
  if (errno(c) !== ENOENT) check(c, -1, "statx");
  return undefined;
}

const NAMED_FLAGS = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC;
const ANONYMOUS_FLAGS = O_TMPFILE | O_WRONLY | O_CLOEXEC;

export function straightWrite(
  path: string,
  data: Uint8Array | string,
  temp: "anonymous" | "named" = "anonymous",
): void {
  libc ??= open();
  const c = libc.symbols;
  const names = namesOf(path);
  const mode = modeOf(c, c.statx(AT_FDCWD, names.target, AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS, stat));
  const createMode = mode === undefined ? 0o666 : mode & 0o600;
  const fd =
    temp === "named"
      ? check(c, c.open(names.temp, NAMED_FLAGS, createMode), "open")
      : check(c, c.open(names.directory, ANONYMOUS_FLAGS, createMode), "open");
  if (typeof data === "string") writeText(c, fd, data);
  else writeAll(c, fd, data);
  if (mode !== undefined) {
    check(c, c.fchown(fd, stat.readUInt32LE(STX_UID), stat.readUInt32LE(STX_GID)), "fchown");
    check(c, c.fchmod(fd, mode), "fchmod");
  }
  check(c, c.fsync(fd), "fsync");
  if (temp === "anonymous") check(c, c.linkat(fd, EMPTY, AT_FDCWD, names.temp, AT_EMPTY_PATH), "linkat");
  check(c, c.close(fd), "close");
  check(c, c.rename(names.temp, names.target), "rename");
  const dir = check(c, c.open(names.directory, O_DIRECTORY | O_CLOEXEC, 0), "open directory");
  check(c, c.fsync(dir), "fsync directory");
  c.close(dir);
}

// ---------------------------------------------------------------------------------------------
// The same calls, yielded one at a time by a generator and made by a driver: the least a library
// pays for writing its protocol once for a sync and an async driver (as index.ts must). No nested
// plans, no validation, no clean-up: only the generator, the driver, and an iterator of chunks. Each
// step is a function of the calls, as in index.ts: cheaper than a call's name and arguments.

type Symbols = Libc["symbols"];
type Step = (c: Symbols) => number;

function* plan(
  c: Symbols,
  path: string,
  data: Uint8Array | string,
  temp: "anonymous" | "named",
): Generator<Step, void, number> {
  const names = namesOf(path);
  const mode = modeOf(c, yield (c) => c.statx(AT_FDCWD, names.target, AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS, stat));
  const createMode = mode === undefined ? 0o666 : mode & 0o600;
  const fd =
    temp === "named"
      ? check(c, yield (c) => c.open(names.temp, NAMED_FLAGS, createMode), "open")
      : check(c, yield (c) => c.open(names.directory, ANONYMOUS_FLAGS, createMode), "open");
  for (const [buffer, length] of typeof data === "string" ? encoded(data) : [[data, data.byteLength] as const]) {
    for (let offset = 0; offset < length; ) {
      const piece = offset === 0 ? buffer : buffer.subarray(offset);
      offset += check(c, yield (c) => c.write(fd, piece, length - offset), "write");
    }
  }
  if (mode !== undefined) {
    check(c, yield (c) => c.fchown(fd, stat.readUInt32LE(STX_UID), stat.readUInt32LE(STX_GID)), "fchown");
    check(c, yield (c) => c.fchmod(fd, mode), "fchmod");
  }
  check(c, yield (c) => c.fsync(fd), "fsync");
  if (temp === "anonymous") check(c, yield (c) => c.linkat(fd, EMPTY, AT_FDCWD, names.temp, AT_EMPTY_PATH), "linkat");
  check(c, yield (c) => c.close(fd), "close");
  check(c, yield (c) => c.rename(names.temp, names.target), "rename");
  const dir = check(c, yield (c) => c.open(names.directory, O_DIRECTORY | O_CLOEXEC, 0), "open directory");
  check(c, yield (c) => c.fsync(dir), "fsync directory");
  yield (c) => c.close(dir);
}

/** A string's UTF-8, a piece at a time in `pieces`, as [buffer, byte count]. */
function* encoded(text: string): Generator<readonly [Uint8Array, number]> {
  let span = pieces.byteLength;
  for (let start = 0; start < text.length; ) {
    const { read, written, short } = encodePiece(text, start, span);
    yield [pieces, written];
    if (short) span = Math.max(read, 1024);
    start += read;
  }
}

export function planWrite(path: string, data: Uint8Array | string, temp: "anonymous" | "named" = "anonymous"): void {
  libc ??= open();
  const c = libc.symbols;
  const steps = plan(c, path, data, temp);
  for (let step = steps.next(); !step.done; ) step = steps.next(step.value(c));
}

/**
 * atomic-write: crash-safe file writes for Bun (and Node.js >= 20).
 *
 * A write either fully succeeds or leaves the previous file intact. The protocol (SPEC.md):
 *   1. resolve symlinks to the final target       5. fsync the temp file
 *   2. create a hidden temp beside the target      6. rename the temp over the target
 *   3. write every byte                            7. fsync the directory
 *   4. apply the final owner, then the mode
 *
 * The protocol is written once, as a generator (`writePlan`) that yields each system call it needs.
 * `runSync` performs those calls as blocking calls; `runAsync` performs the slow ones (an fsync or a
 * large read or write on a device, the source's chunks) without blocking the event loop. Both drivers
 * therefore follow the very same steps in the very same order. The calls go to libc through bun:ffi
 * on x86-64 and aarch64 Linux under Bun, and to node:fs everywhere else.
 */

import { isUtf8 } from "node:buffer";
import * as fs from "node:fs";
import { basename, dirname, isAbsolute, resolve as resolvePath } from "node:path";

// node:os (errno numbers, for error reports) and node:url (file: URLs) are loaded on first use:
// most writes need neither, and each module loaded lengthens the compiled CLI's start-up.
// `require` works in an ES module under Bun; the Node build gets it from createRequire.
const errnoNumbers = (): Record<string, number> =>
  (require("node:os") as typeof import("node:os")).constants.errno as Record<string, number>;
const urlToPath = (url: URL): string => (require("node:url") as typeof import("node:url")).fileURLToPath(url);

// ---------------------------------------------------------------------------------------------
// Public types

/** Options common to every write function. */
export interface WriteOptions {
  /** Exact permission bits of the written file (0..0o7777); not filtered by the umask. null or absent: unset. */
  mode?: number | null;
  /** `false` skips every fsync: still atomic for readers and process crashes, not for power loss. */
  durable?: boolean;
  /** Skip the write entirely when the target already holds exactly these bytes and mode. */
  ifChanged?: boolean;
}

/** Options of the text and stream functions. */
export interface TextWriteOptions extends WriteOptions {
  /** Any encoding `Buffer` supports (a string, as SPEC types it; checked at run time); default `"utf-8"`. */
  encoding?: string;
}

/** Data accepted by the bytes functions. */
export type BytesLike = Uint8Array | ArrayBuffer | ArrayBufferView;

/** Chunks accepted by `atomicWriteStream`. */
export type StreamSource =
  | Iterable<Uint8Array | string>
  | AsyncIterable<Uint8Array | string>
  | ReadableStream<Uint8Array>;

/** One file of a batch. */
export interface BatchEntry {
  path: fs.PathLike;
  data: string | BytesLike;
  encoding?: string;
  mode?: number | null;
}

/** Options of a batch: they apply to every entry. */
export interface BatchOptions {
  durable?: boolean;
  ifChanged?: boolean;
}

/** The error of a write whose new contents are in place but whose durability is unconfirmed. */
export type AtomicWriteError = NodeJS.ErrnoException & { published?: true; renamed?: string[] };

// ---------------------------------------------------------------------------------------------
// Public API: each function validates its arguments, then runs the one plan.

export function atomicWriteText(path: fs.PathLike, data: string, options?: TextWriteOptions): void {
  const request = textRequest(path, data, options);
  runSync(writePlan(request, request.chunks(syncScratch())));
}

export function atomicWriteBytes(path: fs.PathLike, data: BytesLike, options?: WriteOptions): void {
  const request = bytesRequest(path, data, options);
  runSync(writePlan(request, request.chunks()));
}

export function atomicWriteTextAsync(path: fs.PathLike, data: string, options?: TextWriteOptions): Promise<void> {
  return later(() => textRequest(path, data, options));
}

export function atomicWriteBytesAsync(path: fs.PathLike, data: BytesLike, options?: WriteOptions): Promise<void> {
  return later(() => bytesRequest(path, data, options));
}

/** Writes the chunks of `source` (bytes or strings) to `path`, holding only a few chunks in memory. */
export function atomicWriteStream(path: fs.PathLike, source: StreamSource, options?: TextWriteOptions): Promise<void> {
  return later(() => streamRequest(path, source, options));
}

/** The names of the original specification, as the very same function objects. */
export const atomic_write_text = atomicWriteText;
export const atomic_write_bytes = atomicWriteBytes;

// ---------------------------------------------------------------------------------------------
// Requests: validated arguments, before anything on disk is touched.

type Chunks = Iterator<Uint8Array> | AsyncIterator<Uint8Array>;

interface Request {
  /** The path as the caller gave it, for messages. */
  shown: string;
  /** The path as a string the file system accepts. */
  path: string;
  /**
   * A fresh iterator over the bytes to write. Text is encoded into `scratch` when one is given:
   * sync writes share one, since each chunk is written before the next is encoded.
   */
  chunks: (scratch?: Buffer) => Chunks;
  /** Total byte count when known in advance (lets `ifChanged` compare sizes first). */
  length?: number;
  /** Text in a piecewise encoding: its length in UTF-16 units, to size a buffer to encode it into. */
  units?: number;
  mode?: number;
  durable: boolean;
  ifChanged: boolean;
}

function textRequest(path: fs.PathLike, data: unknown, options: unknown): Request {
  const base = baseRequest(path, options);
  if (typeof data !== "string") throw new TypeError(`data must be a string, got ${describe(data)}`);
  const encoding = encodingOf(options);
  // The byte count only serves ifChanged, and counting a huge string costs a full pass over it.
  // Exact only for the piecewise encodings: for base64 and hex, Buffer.byteLength is an estimate
  // (padding, line breaks, stray characters), and a wrong count would rewrite identical bytes.
  const piecewise = PIECEWISE.has(encoding.toLowerCase());
  const length = base.ifChanged && piecewise ? Buffer.byteLength(data, encoding) : undefined;
  const units = piecewise ? data.length : undefined;
  return { ...base, chunks: (scratch) => textChunks(data, encoding, scratch), length, units };
}

function bytesRequest(path: fs.PathLike, data: unknown, options: unknown): Request {
  const base = baseRequest(path, options);
  const bytes = asBytes(data);
  if (bytes === undefined) {
    throw new TypeError(`data must be a Uint8Array, ArrayBuffer or ArrayBufferView, got ${describe(data)}`);
  }
  return { ...base, chunks: () => [bytes][Symbol.iterator](), length: bytes.byteLength };
}

function streamRequest(path: fs.PathLike, source: unknown, options: unknown): Request {
  const base = baseRequest(path, options);
  const encoding = encodingOf(options);
  const iterate = sourceIterator(source);
  return { ...base, chunks: () => gatherSmall(streamChunks(iterate(), encoding)) };
}

function baseRequest(path: unknown, options: unknown): Omit<Request, "chunks"> {
  const { shown, path: fsPath } = pathOf(path);
  // null is "unset" too, as the original specification's `mode=None`.
  const mode = (options as WriteOptions | undefined)?.mode ?? undefined;
  if (mode !== undefined) checkMode(mode);
  return { shown, path: fsPath, mode, ...baseOptions(options) };
}

function baseOptions(options: unknown): { durable: boolean; ifChanged: boolean } {
  if (options !== undefined && (options === null || typeof options !== "object")) {
    throw new TypeError(`options must be an object, got ${describe(options)}`);
  }
  const given = (options ?? {}) as WriteOptions;
  const [durable, ifChanged] = [given.durable ?? true, given.ifChanged ?? false];
  if (typeof durable !== "boolean") throw new TypeError(`options.durable must be a boolean, got ${describe(durable)}`);
  if (typeof ifChanged !== "boolean") {
    throw new TypeError(`options.ifChanged must be a boolean, got ${describe(ifChanged)}`);
  }
  return { durable, ifChanged };
}

function pathOf(path: unknown): { shown: string; path: string } {
  let text: string;
  if (typeof path === "string") text = path;
  else if (Buffer.isBuffer(path)) {
    // Decoding would turn invalid bytes into U+FFFD, and so write to another file than the one named.
    if (!isUtf8(path)) throw new TypeError("path must be valid UTF-8 when given as a Buffer");
    text = path.toString("utf8");
  } else if (path instanceof URL) {
    if (path.protocol !== "file:") throw new TypeError(`path must be a file: URL, got ${path.href}`);
    text = fileUrlPath(path);
  } else throw new TypeError(`path must be a string, Buffer or file: URL, got ${describe(path)}`);
  if (text.length === 0) throw new TypeError("path must not be empty");
  if (text.includes("\0")) throw new TypeError("path must not contain a NUL byte");
  return { shown: text, path: text };
}

/**
 * A bad escape is the caller's argument error. Node throws a URIError for one, Bun returns "" for
 * an escape that is not UTF-8 but keeps a lone "%" as it is: refused here first, so that a URL names
 * the same file, or none, under both.
 */
function fileUrlPath(url: URL): string {
  if (/%(?![0-9a-f]{2})/i.test(url.pathname)) {
    throw new TypeError(`path must be a file: URL of a local path, got ${url.href}: a '%' starts no escape`);
  }
  let text: string;
  try {
    text = urlToPath(url);
  } catch (error) {
    throw new TypeError(`path must be a file: URL of a local path, got ${url.href}: ${(error as Error).message}`);
  }
  if (text === "") throw new TypeError(`path must be a file: URL of a local path, got ${url.href}`);
  return text;
}

function checkMode(mode: unknown): asserts mode is number {
  if (typeof mode !== "number") throw new TypeError(`options.mode must be an integer, got ${describe(mode)}`);
  if (!Number.isInteger(mode) || mode < 0 || mode > 0o7777) {
    throw new RangeError(`options.mode must be an integer from 0 to 0o7777, got ${mode}`);
  }
}

function encodingOf(options: unknown): BufferEncoding {
  const encoding = (options as TextWriteOptions | undefined)?.encoding ?? "utf-8";
  if (typeof encoding !== "string" || !Buffer.isEncoding(encoding)) {
    throw new RangeError(`options.encoding is not an encoding Buffer supports: ${String(encoding)}`);
  }
  return encoding;
}

function asBytes(data: unknown): Uint8Array | undefined {
  const memory =
    data instanceof ArrayBuffer || data instanceof SharedArrayBuffer
      ? data
      : ArrayBuffer.isView(data)
        ? data.buffer
        : undefined;
  if (memory === undefined) return undefined;
  // Memory transferred away (postMessage) reads as empty: written, it would empty the file.
  if (isDetached(memory)) {
    throw new TypeError("data must not be a detached ArrayBuffer, nor a view of one");
  }
  if (data instanceof Uint8Array) return data;
  return ArrayBuffer.isView(data) ? new Uint8Array(memory, data.byteOffset, data.byteLength) : new Uint8Array(memory);
}

/** Whether memory was transferred away (postMessage): it then reads as empty. */
function isDetached(memory: ArrayBufferLike): boolean {
  const { detached } = memory as { detached?: boolean };
  if (detached !== undefined) return detached;
  // Node 20 has no `detached`; slicing a detached buffer throws, even an empty slice.
  if (memory.byteLength !== 0) return false;
  try {
    memory.slice(0, 0);
    return false;
  } catch {
    return true;
  }
}

function describe(value: unknown): string {
  if (value === null) return "null";
  if (typeof value === "object") return value.constructor?.name ?? "object";
  return typeof value;
}

// ---------------------------------------------------------------------------------------------
// Sources of chunks. Large strings are encoded piecewise into one reused buffer, so a 512 MiB
// string never needs a second 512 MiB copy. A chunk is consumed before the next one is pulled.

const TEXT_PIECE = 256 * 1024; // UTF-16 code units per piece: at most 768 KiB of UTF-8
const PIECEWISE: ReadonlySet<string> = new Set([
  "utf8",
  "utf-8",
  "utf16le",
  "utf-16le",
  "ucs2",
  "ucs-2",
  "latin1",
  "binary",
  "ascii",
]);

function* textChunks(text: string, encoding: BufferEncoding, scratch?: Buffer): Generator<Uint8Array> {
  const kind = encoding.toLowerCase();
  if (!PIECEWISE.has(kind)) {
    yield Buffer.from(text, encoding);
    return;
  }
  const buffer = scratch ?? roomFor(text.length, undefined);
  yield* kind === "utf8" || kind === "utf-8" ? utf8Pieces(text, buffer) : pieces(text, encoding, buffer);
}

/** Any piecewise encoding: as many units at a time as always fit the buffer (3 bytes each at most). */
function* pieces(text: string, encoding: BufferEncoding, buffer: Buffer): Generator<Uint8Array> {
  const span = Math.floor(buffer.byteLength / 3);
  for (let start = 0; start < text.length; ) {
    const end = pieceEnd(text, start, span);
    const written = buffer.write(text.slice(start, end), 0, encoding);
    yield buffer.subarray(0, written);
    start = end;
  }
}

const encoder = new TextEncoder();

/**
 * UTF-8 fills the whole buffer each time (ASCII text: three times fewer pieces, so fewer writes
 * and less garbage). A piece stops at the last character that fits; the next slice is then sized
 * to what did fit, so mostly non-ASCII text is not handed over in slices three times too long.
 */
function* utf8Pieces(text: string, buffer: Buffer): Generator<Uint8Array> {
  let span = buffer.byteLength;
  for (let start = 0; start < text.length; ) {
    const end = pieceEnd(text, start, span);
    const whole = start === 0 && end === text.length;
    const { read, written } = encoder.encodeInto(whole ? text : text.slice(start, end), buffer);
    yield buffer.subarray(0, written);
    if (start + read < end) span = Math.max(read, 1024);
    start += read;
  }
}

/** Where a piece of at most `span` units from `start` ends, without splitting a surrogate pair. */
function pieceEnd(text: string, start: number, span: number): number {
  const end = Math.min(start + span, text.length);
  // Each half of a pair encoded alone would become U+FFFD.
  return end < text.length && isHighSurrogate(text.charCodeAt(end - 1)) ? end - 1 : end;
}

let scratchBuffer: Buffer | undefined;

/**
 * The one buffer sync writes encode text into: a fresh buffer per write is garbage whose
 * collection costs more than the rest of a small write. Async writes interleave, so each has its own.
 */
function syncScratch(): Buffer {
  scratchBuffer ??= Buffer.allocUnsafe(TEXT_PIECE * 3);
  return scratchBuffer;
}

/**
 * Encoding buffers of finished async writes of text, kept for the next ones: encoded into a fresh
 * array each, 4 KiB async writes of text took far longer than writes of the same bytes; into a kept
 * buffer, about as long. Async writes interleave, so each borrows one for the whole write; a few
 * small ones are kept.
 */
const spareScratch: Buffer[] = [];
const SPARE_COUNT = 4;
const SPARE_SIZE = 64 * 1024;

function borrowScratch(units: number): Buffer {
  return roomFor(units, spareScratch.pop());
}

function returnScratch(scratch: Buffer): void {
  if (scratch.byteLength <= SPARE_SIZE && spareScratch.length < SPARE_COUNT) spareScratch.push(scratch);
}

const MIN_SCRATCH = 1024; // not more: allocating 64 KiB made a stream of a few short strings slower

/**
 * A scratch buffer that takes `units` UTF-16 units in one piece, up to TEXT_PIECE, in any piecewise
 * encoding: `scratch` itself when it is big enough, else a bigger one (a power of two, so a stream
 * of growing strings allocates a few times, not once per chunk).
 */
function roomFor(units: number, scratch: Buffer | undefined): Buffer {
  const wanted = 3 * Math.min(units, TEXT_PIECE);
  if (scratch && scratch.byteLength >= wanted) return scratch;
  return Buffer.allocUnsafe(Math.min(TEXT_PIECE * 3, Math.max(MIN_SCRATCH, 2 ** Math.ceil(Math.log2(wanted)))));
}

function isHighSurrogate(unit: number): boolean {
  return unit >= 0xd800 && unit <= 0xdbff;
}

function sourceIterator(source: unknown): () => Iterator<unknown> | AsyncIterator<unknown> {
  if (source !== null && typeof source === "object") {
    // A web ReadableStream is one too (Bun, Node >= 20): return() on its iterator cancels the stream.
    const asyncIterable = (source as Partial<AsyncIterable<unknown>>)[Symbol.asyncIterator];
    if (typeof asyncIterable === "function") return () => asyncIterable.call(source);
    const iterable = (source as Partial<Iterable<unknown>>)[Symbol.iterator];
    if (typeof iterable === "function") return () => iterable.call(source);
  }
  throw new TypeError(`source must be an Iterable, AsyncIterable or ReadableStream, got ${describe(source)}`);
}

/** Turns a source's chunks into bytes; strings are encoded, anything else is a TypeError. */
function streamChunks(inner: Iterator<unknown> | AsyncIterator<unknown>, encoding: BufferEncoding): Chunks {
  let pending: Iterator<Uint8Array> | undefined;
  // One buffer for every string chunk of this write, each piece written before the next is
  // encoded: a fresh array per chunk is garbage that waits for the GC, and 1 GiB of 1 MiB strings
  // (later, of 128 KiB strings) encoded that way peaked above the 64 MiB SPEC allows.
  let scratch: Buffer | undefined;
  const piecewise = PIECEWISE.has(encoding.toLowerCase());
  const count = collectorOfChunks();
  const convert = (result: IteratorResult<unknown>): IteratorResult<Uint8Array> | undefined => {
    if (result === null || typeof result !== "object") {
      // As for await would say it; reading .value of a number would name "undefined" as the chunk.
      throw new TypeError(`source iterator results must be objects, got ${describe(result)}`);
    }
    if (result.done) return { done: true, value: undefined };
    const chunk = result.value;
    if (chunk instanceof Uint8Array) {
      count(chunk);
      return { done: false, value: chunk };
    }
    if (typeof chunk === "string") {
      count(chunk);
      if (piecewise) scratch = roomFor(chunk.length, scratch);
      pending = textChunks(chunk, encoding, scratch);
      return undefined;
    }
    throw new TypeError(`source chunks must be Uint8Array or string, got ${describe(chunk)}`);
  };
  const fromPending = (): IteratorResult<Uint8Array> | undefined => {
    if (!pending) return undefined;
    const piece = pending.next();
    if (!piece.done) return piece;
    pending = undefined;
    return undefined;
  };
  const next = (): IteratorResult<Uint8Array> | Promise<IteratorResult<Uint8Array>> => {
    const piece = fromPending();
    if (piece) return piece;
    const result = inner.next();
    if (result instanceof Promise) return result.then((r) => convert(r) ?? next());
    return convert(result) ?? next();
  };
  const stop = () => inner.return?.();
  return { next, return: stop } as Chunks;
}

/**
 * Bun frees the chunks a source discards late: a fresh process let 30 MiB and more of them pile up,
 * so 1 GiB of fresh 1 MiB strings peaked at 68-95 MiB, over the 64 MiB SPEC allows. A full
 * collection after every 8 MiB of chunks brought that under 60 MiB, in no more time (README,
 * "Streams"): the heap of such a process takes 1-4 ms to collect.
 */
const MIB = 1024 * 1024;
const COLLECT_EVERY = 8 * MIB;
const QUICK_COLLECTION_MS = 4;
/**
 * A large heap takes long to collect (~1 ms per MiB of live objects here, 0.5 s for 500 MiB), and
 * the runtime's own collections, sized by the heap, matter more then: after a collection slower
 * than QUICK_COLLECTION_MS the next waits for as many MiB of chunks as this one took tenths of a
 * millisecond, so the collections add at most 0.1 ms to each MiB.
 */
const SLOW_COLLECTION_MS_PER_MIB = 0.1;
const GUESSED_MS_PER_HEAP_MIB = 1;

interface RuntimeHeap {
  heapSize(): number;
  fullGC(): number;
}

let runtimeHeap: RuntimeHeap | null | undefined;
/** Bytes of chunks since the last collection, over every stream of this thread: one heap holds them. */
let chunkBytes = 0;
let collectionSpan = COLLECT_EVERY;
let guessed = false;

/** Bun's collector controls, loaded on first use; null where they cannot be had (Node). */
function loadRuntimeHeap(): RuntimeHeap | null {
  if (!process.versions.bun) return null;
  try {
    return process.getBuiltinModule("bun:jsc") as RuntimeHeap;
  } catch {
    return null;
  }
}

/**
 * Counts the bytes of a stream's chunks (units, for strings) as they arrive, for collectChunks. A
 * chunk yielded again (a source refilling one buffer) is no new garbage: not counted.
 */
function collectorOfChunks(): (chunk: Uint8Array | string) => void {
  let last: Uint8Array | string | undefined;
  return (chunk) => {
    if (chunk === last) return;
    last = chunk;
    chunkBytes += chunk.length;
    if (chunkBytes >= collectionSpan) collectChunks();
  };
}

function collectChunks(): void {
  if (runtimeHeap === undefined) runtimeHeap = loadRuntimeHeap();
  if (!runtimeHeap) {
    collectionSpan = Number.POSITIVE_INFINITY;
    return;
  }
  if (!guessed) {
    // Before any collection is timed, its time is guessed from the heap's size, less the chunks
    // not collected yet (which cost little to collect), so that a large heap is not collected at once.
    guessed = true;
    collectionSpan = spanAfter(((runtimeHeap.heapSize() - chunkBytes) / MIB) * GUESSED_MS_PER_HEAP_MIB);
    if (chunkBytes < collectionSpan) return;
  }
  const started = performance.now();
  runtimeHeap.fullGC();
  chunkBytes = 0;
  collectionSpan = spanAfter(performance.now() - started);
}

/** How many bytes of chunks to let by after a collection that took `ms`. */
function spanAfter(ms: number): number {
  return ms <= QUICK_COLLECTION_MS ? COLLECT_EVERY : Math.max(COLLECT_EVERY, (ms / SLOW_COLLECTION_MS_PER_MIB) * MIB);
}

/** Chunks below this size are gathered (copied) into one buffer: a write per 64 KiB, not per chunk. */
const SMALL_CHUNK = 16 * 1024;
const GATHERED = 64 * 1024;

/**
 * A source of many small chunks (lines of a log, rows of a CSV) would cost a system call, and a
 * turn of the async driver, per chunk. Small ones are copied into one buffer, handed out when full,
 * before a large chunk, and at the end; large ones pass through as they are. The buffer is reused:
 * the plan writes each chunk whole before it asks for the next.
 */
function gatherSmall(chunks: Chunks): Chunks {
  let buffer: Buffer | undefined;
  let filled = 0;
  /** A result taken from the source but not handed out yet, because the gathered bytes go first. */
  let held: IteratorResult<Uint8Array> | undefined;
  const handOut = (after: IteratorResult<Uint8Array>): IteratorResult<Uint8Array> => {
    held = after;
    const gathered = (buffer as Buffer).subarray(0, filled);
    filled = 0;
    return { done: false, value: gathered };
  };
  /** What to hand out for this result of the source, or undefined to go on gathering. */
  const take = (result: IteratorResult<Uint8Array>): IteratorResult<Uint8Array> | undefined => {
    if (result.done || result.value.byteLength >= SMALL_CHUNK) return filled > 0 ? handOut(result) : result;
    const chunk = result.value;
    if (filled + chunk.byteLength > GATHERED) return handOut(result);
    buffer ??= Buffer.allocUnsafe(GATHERED);
    buffer.set(chunk, filled);
    filled += chunk.byteLength;
    return undefined;
  };
  const next = (): IteratorResult<Uint8Array> | Promise<IteratorResult<Uint8Array>> => {
    for (;;) {
      const result = held ?? chunks.next();
      held = undefined;
      if (result instanceof Promise) return result.then((settled) => take(settled) ?? next());
      const out = take(result);
      if (out) return out;
    }
  };
  return { next, return: () => chunks.return?.() } as Chunks;
}

// ---------------------------------------------------------------------------------------------
// The system calls the plan may ask for. Each driver performs them its own way; this table runs
// them through node:fs, the portable way. On Linux under Bun, `libcCalls` runs them through libc
// instead, and adds what node:fs cannot do (see "System calls through libc" below).

/** What the protocol needs to know of a file; node:fs Stats has these very fields. */
interface FileInfo {
  mode: number;
  uid: number;
  gid: number;
  size: number;
  /** fstat only: the modification time in nanoseconds, as text. */
  modified?: string;
}

const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;

const writeSync = (fd: number, data: Uint8Array, offset: number, length: number): number =>
  fs.writeSync(fd, data, offset, length);
const fsyncSync = (fd: number): void => fs.fsyncSync(fd);

const ops = {
  lstat: (path: string): FileInfo => fs.lstatSync(path),
  readlink: (path: string): string => fs.readlinkSync(path),
  open: (path: string, flags: number, mode: number): number => fs.openSync(path, flags, mode),
  fstat: (fd: number): FileInfo => {
    const { mode, uid, gid, size, mtimeNs } = fs.fstatSync(fd, { bigint: true });
    return { mode: Number(mode), uid: Number(uid), gid: Number(gid), size: Number(size), modified: String(mtimeNs) };
  },
  statfsType: (path: string): number => fs.statfsSync(path).type,
  /** Whether names in this directory can be added but never removed (chattr +a); node:fs cannot tell. */
  appendOnly: (_directory: string): boolean => false,
  write: writeSync,
  /** The same write, to a file in memory (the async driver treats it differently). */
  writeInMemory: writeSync,
  read: (fd: number, into: Uint8Array, offset: number, length: number, position: number): number =>
    fs.readSync(fd, into, offset, length, position),
  fchown: (fd: number, uid: number, gid: number): void => fs.fchownSync(fd, uid, gid),
  fchmod: (fd: number, mode: number): void => fs.fchmodSync(fd, mode),
  fsync: fsyncSync,
  /** The same fsync, of a file in memory (the async driver treats it differently). */
  fsyncInline: fsyncSync,
  fdatasync: (fd: number): void => fs.fdatasyncSync(fd),
  close: (fd: number): void => fs.closeSync(fd),
  rename: (from: string, to: string): void => fs.renameSync(from, to),
  unlink: (path: string): void => fs.unlinkSync(path),
  // open(O_TMPFILE) and linkat need libc, which node:fs lacks. The plan asks this layer only if
  // ATOMIC_WRITE_FFI changed while a write was under way: "none here" (undefined) then makes it use
  // a named temp, without marking the directory as one where the kernel refused anonymous temps.
  openAnonymous: (_directory: string, _mode: number): number | undefined => undefined,
  linkAnonymous: (_fd: number, path: string): void => {
    throw systemError("ENOSYS", "anonymous temp files need libc", "linkat", path);
  },
  /** Runs a plan of its own with this driver (see `nested`). */
  run: <T>(plan: Plan<T>): T => runSync(plan),
  /** Pulls the next chunk of the data (not a system call: the source may be asynchronous). */
  next: (chunks: Chunks): IteratorResult<Uint8Array> => chunks.next() as IteratorResult<Uint8Array>,
};

type Ops = typeof ops;
/** What a step may call: the async driver's calls may return a promise of their result instead. */
type Syscalls = { [K in keyof Ops]: (...args: Parameters<Ops[K]>) => ReturnType<Ops[K]> | Promise<ReturnType<Ops[K]>> };
/**
 * One step of a plan: `yield (sys) => sys.fsync(fd)` reads like the call itself, and the plan
 * resumes with its result, typed where it is used. The driver hands each step its system calls
 * (the async driver awaits what they return). A function, not an operation's name and arguments
 * for the driver to look up and spread: that cost a 100 B write on tmpfs about 2 µs of its ~38.
 */
type Call = (sys: Syscalls) => unknown;
type Plan<T> = Generator<Call, T, unknown>;

/**
 * The same, for clean-up steps whose own failure must not hide the error being reported: it is
 * ignored. A wrapped step, not a generator with a try/catch around the call: that generator cost a
 * small write on tmpfs more than the call it wrapped.
 */
function quietly(call: Call): Call {
  return (sys) => {
    try {
      const outcome = call(sys);
      return outcome instanceof Promise ? outcome.catch(() => undefined) : outcome;
    } catch {
      return undefined;
    }
  };
}

/**
 * A step that runs a whole plan of its own, with the same driver: for the loops over chunks. Run
 * with yield*, each chunk resumed every generator around them too, and the runtime then compiled
 * those as well: in a process that streams 1 GiB, that cost about 4 MiB of peak memory.
 */
function nested<T>(plan: Plan<T>): Call {
  return (sys) => sys.run(plan);
}

/** Errors thrown by the caller's own source: they reach the caller as the very same, untouched objects. */
const sourceErrors = new WeakSet<object>();

function fromSource(error: unknown): unknown {
  if (typeof error === "object" && error !== null) sourceErrors.add(error);
  return error;
}

function runSync<T>(plan: Plan<T>): T {
  const calls = syscalls();
  let step = plan.next();
  while (!step.done) {
    let result: unknown;
    try {
      result = step.value(calls);
    } catch (error) {
      step = plan.throw(error);
      continue;
    }
    step = plan.next(result);
  }
  return step.value;
}

/** Writes at least this large go to the thread pool; smaller ones cost less than the hop there. */
const BIG_IO = 64 * 1024;

/**
 * The async driver's system calls: the ones it may have to wait for return promises. An fsync of a
 * file on a device, and reads and writes of 64 KiB or more, go to the thread pool; a large write to
 * a file in memory is made here and then yields a turn of the event loop; `next` awaits the source.
 * The remaining calls (open, fchmod, rename, ...) take microseconds, less than a hop to the pool,
 * and are the sync ones (`calls`).
 */
function pooled(calls: Ops): Syscalls {
  return {
    ...calls,
    fsync: (fd: number) => callback<void>((done) => fs.fsync(fd, done)),
    fdatasync: (fd: number) => callback<void>((done) => fs.fdatasync(fd, done)),
    write: (fd: number, data: Uint8Array, offset: number, length: number) =>
      length < BIG_IO
        ? calls.write(fd, data, offset, length)
        : callback<number>((done) => fs.write(fd, data, offset, length, null, done)),
    read: (fd: number, into: Uint8Array, offset: number, length: number, position: number) =>
      length < BIG_IO
        ? calls.read(fd, into, offset, length, position)
        : callback<number>((done) => fs.read(fd, into, offset, length, position, done)),
    // A copy into memory waits on no device: done here, not bounced to another core and back (which
    // also made encoding text slower), but a large one is followed by a turn of the event loop, as
    // while the thread pool wrote it, so other work is not held up for a whole large write.
    writeInMemory: (fd: number, data: Uint8Array, offset: number, length: number) => {
      const written = calls.writeInMemory(fd, data, offset, length);
      return length < BIG_IO ? written : new Promise<number>((resolve) => setImmediate(() => resolve(written)));
    },
    run: <T>(plan: Plan<T>) => runAsync(plan),
    // Only this driver pulls a caller's own source (every stream is async).
    next: async (chunks: Chunks) => {
      try {
        return (await chunks.next()) as IteratorResult<Uint8Array>;
      } catch (error) {
        throw fromSource(error);
      }
    },
  };
}

/** The async driver's calls over each layer (libc or node:fs), made once. */
const pooledCalls = new WeakMap<Ops, Syscalls>();

function asyncCalls(): Syscalls {
  const sync = syscalls();
  let calls = pooledCalls.get(sync);
  if (!calls) {
    calls = pooled(sync);
    pooledCalls.set(sync, calls);
  }
  return calls;
}

function callback<T>(start: (done: (error: Error | null, value?: T) => void) => void): Promise<T> {
  return new Promise((resolve, reject) => start((error, value) => (error ? reject(error) : resolve(value as T))));
}

async function runAsync<T>(plan: Plan<T>): Promise<T> {
  const calls = asyncCalls();
  let step = plan.next();
  while (!step.done) {
    let result: unknown;
    try {
      const outcome = step.value(calls);
      // Inline calls are done already: awaiting them too would add a turn of the event loop each.
      result = outcome instanceof Promise ? await outcome : outcome;
    } catch (error) {
      step = plan.throw(error);
      continue;
    }
    step = plan.next(result);
  }
  return step.value;
}

/** Names the caller's path in a system error (whose own path may be a temp the caller never saw). */
function blame(error: unknown, shown: string): unknown {
  if (!(error instanceof Error) || sourceErrors.has(error)) return error;
  const system = error as NodeJS.ErrnoException;
  if (system.code === undefined || system.path === shown || blamed.has(error)) return error;
  blamed.add(error);
  const detail =
    system.path === undefined ? (system.syscall ?? "write") : `${system.syscall ?? "write"} '${system.path}'`;
  // After the rename (the directory's fsync) the new contents are in place: the message says so.
  const what = (error as AtomicWriteError).published
    ? `wrote '${shown}', but durability is unconfirmed`
    : `cannot write '${shown}'`;
  system.message = `${system.code}: ${what} (${detail}: ${reason(system)})`;
  system.path = shown;
  return error;
}

const blamed = new WeakSet<object>();

function reason(error: NodeJS.ErrnoException): string {
  // Bun's node:fs words some errors "unknown error" (EDQUOT among them): the table says what they
  // are. The library's own errors already say it, some in words of their own.
  const known = described.has(error) ? undefined : ERRNO_TEXT[error.code as string];
  if (known !== undefined) return known;
  const original = error.message.replace(/^[A-Z]+: /, "");
  return original.split(",")[0] as string;
}

// ---------------------------------------------------------------------------------------------
// Asynchronous writes: argument errors reject, and writes to one file settle in call order.

const queues = new Map<string, Promise<unknown>>();

/** Runs `write` once every earlier async write to any of `keys` has settled. */
function enqueue(keys: string[], write: () => Promise<void>): Promise<void> {
  const earlier = [...new Set(keys.map((key) => queues.get(key)).filter((p) => p !== undefined))];
  const current =
    earlier.length === 0
      ? write()
      : earlier.length === 1
        ? (earlier[0] as Promise<unknown>).then(write, write)
        : Promise.allSettled(earlier).then(write);
  for (const key of keys) queues.set(key, current);
  const forget = () => {
    for (const key of keys) if (queues.get(key) === current) queues.delete(key);
  };
  current.then(forget, forget);
  return current;
}

function later(build: () => Request): Promise<void> {
  let request: Request;
  let key: string;
  try {
    request = build();
    key = fileKey(request.path);
    anchor(request);
  } catch (error) {
    return Promise.reject(error);
  }
  return enqueue([key], () => withScratch(request.units, (scratch) => writeAsync(request, scratch)));
}

/**
 * An async write runs later, perhaps after the process has changed directory: a relative path is
 * tied to the working directory of the call, as its place in the queue already is, by prefixing it
 * with that directory's path (not normalised: "link/.." must still go through the link). Unless
 * that path would not reach it: a process may not be allowed through the directories above its
 * own (a daemon that dropped its privileges in /root/app), or the temp's path may exceed PATH_MAX.
 * The path then stays as given, as for a sync write, and only a change of directory before the
 * write ends could send it elsewhere.
 */
function anchor(request: Request): void {
  if (isAbsolute(request.path)) return;
  const cwd = reachableWorkingDirectory();
  if (cwd === undefined) return;
  const anchored = process.platform === "win32" ? resolvePath(cwd, request.path) : `${cwd}/${request.path}`;
  if (Buffer.byteLength(anchored) + TEMP_NAME_EXTRA < PATH_MAX) request.path = anchored;
}

let lastWorkingDirectory: { path: string; reachable: boolean } | undefined;

/** The working directory, if its path can be followed to it (asked once per directory). */
function reachableWorkingDirectory(): string | undefined {
  let path: string;
  try {
    path = process.cwd();
  } catch {
    return undefined; // removed: the write itself reports what fails (ENOENT)
  }
  if (lastWorkingDirectory?.path !== path) {
    let reachable = true;
    try {
      fs.accessSync(path, fs.constants.X_OK);
    } catch {
      reachable = false;
    }
    lastWorkingDirectory = { path, reachable };
  }
  return lastWorkingDirectory.reachable ? path : undefined;
}

async function writeAsync(request: Request, scratch: Buffer | undefined): Promise<void> {
  const chunks = request.chunks(scratch);
  try {
    await runAsync(writePlan(request, chunks));
  } catch (error) {
    releaseSource(chunks);
    throw error;
  }
}

/**
 * A source we stopped reading early gets to release what it holds (a socket, a file). Not awaited:
 * a return() that never settles would hold back the write's rejection, and with it every later
 * write to the same file. Its own failure is not the news: the write's error is.
 */
function releaseSource(chunks: Chunks): void {
  try {
    Promise.resolve(chunks.return?.()).catch(() => undefined);
  } catch {
    // return() threw at once.
  }
}

/** Runs an async write with a buffer of its own to encode text of up to `units` into, if any. */
async function withScratch(units: number | undefined, write: (scratch?: Buffer) => Promise<void>): Promise<void> {
  const scratch = units === undefined ? undefined : borrowScratch(units);
  try {
    await write(scratch);
  } finally {
    if (scratch) returnScratch(scratch);
  }
}

function directoryOfKey(key: string): string {
  return key.slice(0, key.lastIndexOf("/"));
}

/** One key per file, however it is reached (relative path, symlinks, symlinked directories). */
function fileKey(path: string): string {
  let target: Target;
  try {
    target = runSync(resolveTarget(path));
  } catch {
    return plainKey(path); // the write itself will report the error, in its turn
  }
  try {
    return `${realDirectory(target.directory)}/${target.name}`;
  } catch {
    // A path with no "/" at all (a Windows drive path) leaves realDirectory no ancestor, and a
    // removed working directory no name.
    return plainKey(target.path);
  }
}

/** The path made absolute, where the working directory can be named: a key, not a place to write. */
function plainKey(path: string): string {
  try {
    return resolvePath(path);
  } catch {
    return path; // a removed working directory has no name
  }
}

const realDirectories = new Map<string, string>();

/**
 * A directory's real path, remembered: it only orders writes, so a directory symlink re-pointed
 * while the program runs can at worst let two writes settle out of order, each still atomic.
 */
function realDirectory(directory: string): string {
  // Absolute, so that a chdir does not change what a key means; but not normalised: "link/.."
  // is the parent of the link's target, which only the kernel's walk (realpath(3)) gets right.
  const absolute = isAbsolute(directory) ? directory : `${process.cwd()}/${directory}`;
  let real = realDirectories.get(absolute);
  if (real === undefined) {
    try {
      real = fs.realpathSync.native(absolute);
    } catch (error) {
      // Not there yet (it may be by the time the write runs): keyed under its nearest real
      // ancestor, the same file gets the same key before and after the directory is made.
      const slash = absolute.lastIndexOf("/");
      if (slash < 0) throw error;
      const parent = realDirectory(absolute.slice(0, slash) || "/");
      return `${parent === "/" ? "" : parent}/${absolute.slice(slash + 1)}`;
    }
    if (realDirectories.size >= 4096) realDirectories.clear();
    realDirectories.set(absolute, real);
  }
  return real;
}

// ---------------------------------------------------------------------------------------------
// Batches: every file staged before any is renamed.

function batchRequests(
  entries: unknown,
  options: unknown,
): { requests: Request[]; keys: string[]; durable: boolean; units?: number } {
  if (!Array.isArray(entries)) throw new TypeError(`entries must be an array, got ${describe(entries)}`);
  const { durable, ifChanged } = baseOptions(options);
  // Every entry is checked before any path is looked up (fileKey stats it): a bad argument anywhere
  // is refused before anything on disk is touched.
  const requests = Array.from(entries as unknown[], (entry, index) => {
    if (entry === null || typeof entry !== "object") {
      throw new TypeError(`entries[${index}] must be an object, got ${describe(entry)}`);
    }
    return entryRequest(entry as BatchEntry, index, durable, ifChanged);
  });
  const keys: string[] = [];
  const seen = new Map<string, number>();
  requests.forEach((request, index) => {
    const key = fileKey(request.path);
    const first = seen.get(key);
    if (first !== undefined) {
      throw new TypeError(`entries[${index}].path names the same file as entries[${first}].path: ${request.shown}`);
    }
    seen.set(key, index);
    keys.push(key);
  });
  // Entries are staged one after another, so one buffer serves all their text: sized for the longest.
  let units: number | undefined;
  for (const request of requests) if (request.units !== undefined) units = Math.max(units ?? 0, request.units);
  return { requests, keys, durable, units };
}

function entryRequest(entry: BatchEntry, index: number, durable: boolean, ifChanged: boolean): Request {
  const { path, data, encoding, mode } = entry;
  const perEntry = { encoding, mode, durable, ifChanged };
  try {
    if (typeof data === "string") return textRequest(path, data, perEntry);
    if (asBytes(data) === undefined) {
      // bytesRequest would say bytes are wanted, where a string would do as well.
      throw new TypeError(`data must be a string, Uint8Array, ArrayBuffer or ArrayBufferView, got ${describe(data)}`);
    }
    if (encoding !== undefined) encodingOf(perEntry); // meaningless for bytes, but a bogus one is a mistake
    return bytesRequest(path, data, perEntry);
  } catch (error) {
    // The checks name the argument as for a single write ("path", "options.mode"): say which entry.
    if (error instanceof TypeError || error instanceof RangeError) {
      error.message = `entries[${index}].${error.message.replace(/^options\./, "")}`;
    }
    throw error;
  }
}

/** Writes several files: all are staged, then all renamed, then each directory fsynced once. */
export function atomicWriteMany(entries: BatchEntry[], options?: BatchOptions): void {
  runSync(batchPlan(batchRequests(entries, options), syncScratch()));
}

export function atomicWriteManyAsync(entries: BatchEntry[], options?: BatchOptions): Promise<void> {
  let batch: ReturnType<typeof batchRequests>;
  try {
    batch = batchRequests(entries, options);
    for (const request of batch.requests) anchor(request);
  } catch (error) {
    return Promise.reject(error);
  }
  return enqueue(batch.keys, () => withScratch(batch.units, (scratch) => runAsync(batchPlan(batch, scratch))));
}

// ---------------------------------------------------------------------------------------------
// The write protocol.

interface Target {
  /** Where the data goes: symlinks already followed. */
  path: string;
  /** Its directory, where the temp is made and which is fsynced. */
  directory: string;
  /** Its last component, which the temp's name starts with. */
  name: string;
  /** The file being replaced, if there is one. */
  existing?: FileInfo;
}

/** A temp file that holds the complete new contents, durably, under a hidden name. */
interface Staged {
  shown: string;
  temp: string;
  target: string;
  directory: string;
  /** statfs f_type of the directory's file system (see Temp). */
  fsType: number;
  /** The temp's descriptor while it is still open (see stageTemp). */
  fd?: number;
}

function* writePlan(request: Request, chunks: Chunks): Plan<void> {
  try {
    const staged = yield* stage(request, chunks, true);
    if (!staged) return;
    try {
      yield* replaceTarget(staged);
    } finally {
      const { fd } = staged;
      if (fd !== undefined) yield quietly((sys) => sys.close(fd));
    }
    if (request.durable) yield* syncDirectory(staged.directory, staged.fsType);
  } catch (error) {
    throw blame(error, request.shown);
  }
}

type Batch = ReturnType<typeof batchRequests>;

function* batchPlan({ requests, keys, durable }: Batch, scratch?: Buffer): Plan<void> {
  const staged: Staged[] = [];
  // Each staged file's directory as its key names it (real path): "a", "a/." and a symlink to "a"
  // are one directory, fsynced once.
  const realDirectories: string[] = [];
  try {
    for (const [index, request] of requests.entries()) {
      try {
        // Each temp is closed once staged, so that a large batch holds a bounded number of descriptors.
        const one = yield* stage(request, request.chunks(scratch), false);
        if (one) {
          staged.push(one);
          realDirectories.push(directoryOfKey(keys[index] as string));
        }
      } catch (error) {
        throw blame(error, request.shown);
      }
    }
  } catch (error) {
    // Nothing was renamed yet: removing every temp leaves every target as it was.
    for (const one of staged) yield quietly((sys) => sys.unlink(one.temp));
    throw error;
  }
  const renamed: string[] = [];
  // Each directory touched, with the first file renamed into it: the one its fsync error names.
  const directories = new Map<string, Staged>();
  let failure: unknown;
  for (const [index, one] of staged.entries()) {
    try {
      yield (sys) => sys.rename(one.temp, one.target);
    } catch (error) {
      failure = blame(error, one.shown);
      for (const rest of staged.slice(index)) yield quietly((sys) => sys.unlink(rest.temp));
      break;
    }
    renamed.push(one.shown);
    const directory = realDirectories[index] as string;
    if (!directories.has(directory)) directories.set(directory, one);
  }
  // Even after a failed rename, the renames that did happen are made durable.
  for (const first of durable ? directories.values() : []) {
    try {
      yield* syncDirectory(first.directory, first.fsType);
    } catch (error) {
      failure ??= blame(error, first.shown);
    }
  }
  if (failure === undefined) return;
  if (renamed.length > 0) Object.assign(failure as object, { published: true, renamed });
  throw failure;
}

/**
 * Steps 1 to 5 (and the naming of an anonymous temp): an fsynced temp beside the target, holding
 * the whole new contents with their final owner and mode. Nothing visible has changed yet.
 */
function* stage(request: Request, chunks: Chunks, renamedNext: boolean): Plan<Staged | undefined> {
  const target = yield* resolveTarget(request.path);
  const mode = request.mode ?? (target.existing ? target.existing.mode & 0o7777 : undefined);
  const replay =
    request.ifChanged && target.existing
      ? ((yield nested(compareWithTarget(target, chunks, request.length, mode))) as Replay | "unchanged" | undefined)
      : undefined;
  if (replay === "unchanged") return undefined; // ifChanged: the target already holds exactly these bytes
  try {
    return yield* stageTemp(request, target, mode, chunks, replay, renamedNext);
  } finally {
    if (replay) yield quietly((sys) => sys.close(replay.fd));
  }
}

function* stageTemp(
  request: Request,
  target: Target,
  mode: number | undefined,
  chunks: Chunks,
  replay: Replay | undefined,
  renamedNext: boolean,
): Plan<Staged> {
  const traits = directoryTraits(target.directory);
  // Asked once per directory: false is a known-good answer, and only it spares the statx next time.
  if (traits.appendOnly !== false) yield* refuseAppendOnly(traits, target);
  const temp = yield* createTemp(target, mode);
  try {
    // Probed once per directory: not a generator of its own, which cost more than the lookup.
    temp.fsType = traits.fsType ??= (yield (sys) => sys.statfsType(target.directory)) as number;
    if (replay) yield nested(copyPrefix(replay, temp));
    yield nested(writeAll(temp, chunks));
    // Bytes given at the call but read at the write's turn: memory transferred away or shrunk
    // meanwhile (postMessage, a resizable ArrayBuffer) reads short, and would publish a cut file.
    if (request.length !== undefined && temp.written !== request.length) throw readShort(request.length, temp.written);
    yield* applyOwnerAndMode(temp.fd, target, mode);
    if (request.durable) yield flush(temp.fd, isInMemory(temp.fsType));
    const anonymous = temp.path === undefined;
    yield* nameTemp(temp, target, request.durable);
    // When its rename comes next (a single write), a fsynced anonymous temp stays open until after
    // it: a kill -9 between naming and renaming would leave the name behind, and the close need not
    // happen in that window. Not without the fsync (on NFS the close is what reports a failed
    // flush), nor for named temps, nor in a batch (bounded descriptors).
    if (!(renamedNext && anonymous && request.durable)) {
      temp.open = false;
      yield (sys) => sys.close(temp.fd);
    }
  } catch (error) {
    if (temp.open) yield quietly((sys) => sys.close(temp.fd));
    const { path } = temp;
    if (path !== undefined) yield quietly((sys) => sys.unlink(path));
    throw error;
  }
  return {
    shown: request.shown,
    temp: temp.path as string,
    target: target.path,
    directory: target.directory,
    fsType: temp.fsType,
    fd: temp.open ? temp.fd : undefined,
  };
}

const MAX_SYMLINKS = 40; // Linux's own limit for one path walk

/** Step 1: follow symlinks to the file that will really be replaced. */
function* resolveTarget(path: string): Plan<Target> {
  let current = path;
  for (let hops = 0; ; hops++) {
    // A path, or a link's text, ending in "/" can only name a directory: never a file to write.
    const mustBeDirectory = current.endsWith("/");
    let stat: FileInfo;
    try {
      stat = (yield (sys) => sys.lstat(current)) as FileInfo;
    } catch (error) {
      // A missing file is simply created; a missing directory is reported when the temp is.
      if (!mustBeDirectory && (error as NodeJS.ErrnoException).code === "ENOENT") {
        return targetAt(current);
      }
      throw error;
    }
    const kind = stat.mode & S_IFMT;
    if (kind === S_IFLNK) {
      if (hops >= MAX_SYMLINKS) throw systemError("ELOOP", "too many levels of symbolic links", "open", path);
      current = linkTarget(current, (yield (sys) => sys.readlink(current)) as string);
      continue;
    }
    if (kind === S_IFDIR) throw systemError("EISDIR", "illegal operation on a directory", "open", path);
    if (mustBeDirectory) throw systemError("ENOTDIR", "not a directory", "open", path);
    // Renaming over a device, FIFO or socket would silently swap it for a plain file.
    if (kind !== S_IFREG) throw systemError("EINVAL", "not a regular file", "open", path);
    return targetAt(current, stat);
  }
}

/**
 * Where a link's text leads, as the kernel would follow it: a relative text starts in the link's own
 * directory. Not through node:path's resolve, which would drop a "dir/.." where "dir" is itself a
 * symlink, and so reach a different file than the kernel does.
 */
function linkTarget(link: string, text: string): string {
  if (isAbsolute(text)) return text;
  const { directory } = targetAt(link);
  return directory === "/" ? `/${text}` : `${directory}/${text}`;
}

/**
 * Splits the path as node:path's dirname and basename would, but in JavaScript: right after a
 * system call each of those native calls starts cold (every system call flushes the TLB here; see
 * README, Performance), and costs more than the split itself. Windows paths (drive letters, both
 * separators) are left to node:path.
 */
function targetAt(path: string, existing?: FileInfo): Target {
  if (process.platform === "win32") return { path, directory: dirname(path), name: basename(path), existing };
  const slash = path.lastIndexOf("/");
  const directory = slash < 0 ? "." : slash === 0 ? "/" : path.slice(0, slash);
  return { path, directory, name: path.slice(slash + 1), existing };
}

interface Temp {
  fd: number;
  /** Its name; undefined while it is an anonymous (O_TMPFILE) inode that no crash can leave behind. */
  path?: string;
  open: boolean;
  /** statfs f_type of its file system (on tmpfs or ramfs, writing and flushing never wait on a device). */
  fsType: number;
  /** Bytes written into it so far. */
  written: number;
}

const TEMP_FLAGS = fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW;
const NAME_ROOM = 64; // bytes of the target's name kept in the temp's name: far below any NAME_MAX
/** Bytes a temp's name may add to its target's: a dot before it, then a dot, 12 hex digits, ".tmp". */
const TEMP_NAME_EXTRA = 18;

/** Step 2: an exclusive temp in the target's own directory (a rename across filesystems is not atomic). */
function* createTemp(target: Target, mode: number | undefined): Plan<Temp> {
  // Until step 4, the temp is never readable by anyone the final file will not admit; with no
  // mode to keep, 0o666 lets the kernel apply the umask and default ACLs as a plain create would.
  const createMode = mode === undefined ? 0o666 : mode & 0o600;
  const { directory } = target;
  if (anonymousTempsAllowed(directory)) {
    try {
      const fd = (yield (sys) => sys.openAnonymous(directory, createMode)) as number | undefined;
      if (fd !== undefined) return { fd, open: true, fsType: 0, written: 0 };
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code as string;
      // ext4 refuses O_TMPFILE in a removed directory with EPERM, where a create says ENOENT: the
      // named temp's attempt tells which it is, and fails with its own code if it fails too.
      if (code !== "EPERM") {
        if (!NO_ANONYMOUS_TEMPS.has(code)) throw error;
        directoryTraits(directory).anonymous = false;
      }
    }
  }
  for (let attempt = 0; ; attempt++) {
    const path = tempName(target);
    try {
      const fd = (yield (sys) => sys.open(path, TEMP_FLAGS, createMode)) as number;
      return { fd, path, open: true, fsType: 0, written: 0 };
    } catch (error) {
      // A clash with another writer's random name is vanishingly rare but must not fail the write.
      if ((error as NodeJS.ErrnoException).code !== "EEXIST" || attempt >= 3) throw error;
    }
  }
}

/** Gives an anonymous temp its hidden name, just before the rename that needs one. */
function* nameTemp(temp: Temp, target: Target, durable: boolean): Plan<void> {
  if (temp.path !== undefined) return;
  for (let attempt = 0; ; attempt++) {
    const path = tempName(target);
    try {
      yield (sys) => sys.linkAnonymous(temp.fd, path);
      temp.path = path;
      break;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST" || attempt >= 3) throw error;
    }
  }
  // btrfs may not persist an fsync of a file that had no name yet: flush it again now it has one.
  if (durable && temp.fsType === BTRFS_MAGIC) yield (sys) => sys.fdatasync(temp.fd);
}

function tempName(target: Target): string {
  let name = target.name;
  while (Buffer.byteLength(name) > NAME_ROOM) name = Array.from(name).slice(0, -1).join("");
  return `${target.directory}/.${name}.${randomHex()}.tmp`;
}

let entropy = "";
let entropyAt = 0;

/**
 * 48 random bits in hex, unpredictable to other users: drawn from the CSPRNG and turned into hex
 * 256 names at a time (one native call per write starts cold after a system call).
 */
function randomHex(): string {
  if (entropyAt + 12 > entropy.length) {
    // Web Crypto's CSPRNG: importing node:crypto would lengthen the CLI's start-up.
    entropy = Buffer.from(crypto.getRandomValues(new Uint8Array(6 * 256)).buffer).toString("hex");
    entropyAt = 0;
  }
  entropyAt += 12;
  return entropy.slice(entropyAt - 12, entropyAt);
}

/** Step 3: every byte, resuming short writes. */
function* writeAll(temp: Temp, chunks: Chunks): Plan<void> {
  for (;;) {
    const next = (yield (sys) => sys.next(chunks)) as IteratorResult<Uint8Array>;
    if (next.done) return;
    yield* writeChunk(temp, next.value);
  }
}

function* writeChunk(temp: Temp, chunk: Uint8Array): Plan<void> {
  const op = isInMemory(temp.fsType) ? "writeInMemory" : "write";
  const length = chunk.byteLength;
  if (length === 0 && isDetached(chunk.buffer)) throw changedUnderfoot(chunk);
  for (let offset = 0; offset < length; ) {
    if (chunk.byteLength !== length) throw changedUnderfoot(chunk);
    const written = (yield (sys) => sys[op](temp.fd, chunk, offset, length - offset)) as number;
    // A regular file that accepts nothing would make this loop spin forever.
    if (written <= 0) throw systemError("EIO", "write accepted no bytes", "write", undefined);
    offset += written;
    temp.written += written;
  }
}

/**
 * An async write reads the caller's bytes when its turn comes: memory transferred away meanwhile
 * (postMessage) reads as empty, and a resizable buffer may have shrunk. Written as they are, either
 * would publish a file cut short, as if complete.
 */
function readShort(given: number, read: number): TypeError {
  return new TypeError(
    `data must not be detached or shrunk before it is written: ${given} bytes were given, ${read} could be read`,
  );
}

function changedUnderfoot(chunk: Uint8Array): TypeError {
  return isDetached(chunk.buffer)
    ? new TypeError("data must not be a detached ArrayBuffer: it was transferred before it was written")
    : new TypeError("data must not shrink while it is written (a resizable ArrayBuffer)");
}

/**
 * Step 4: owner first, since chown clears the setuid and setgid bits that the mode may set. Even
 * when the old file has the process's own ids: in a setgid directory (or on a file system mounted
 * with grpid) the temp took the directory's group, and only this gives the old one back.
 */
function* applyOwnerAndMode(fd: number, target: Target, mode: number | undefined): Plan<void> {
  const old = target.existing;
  if (old) {
    try {
      yield (sys) => sys.fchown(fd, old.uid, old.gid);
    } catch {
      // Not allowed to give the file away: keep at least the group where that is allowed.
      yield quietly((sys) => sys.fchown(fd, -1, old.gid));
    }
  }
  if (mode !== undefined) yield (sys) => sys.fchmod(fd, mode);
}

/** Step 6, with clean-up: a failed rename leaves the temp behind unless it is removed here. */
function* replaceTarget(staged: Staged): Plan<void> {
  try {
    yield (sys) => sys.rename(staged.temp, staged.target);
  } catch (error) {
    yield quietly((sys) => sys.unlink(staged.temp));
    throw error;
  }
}

/** Step 7: makes the rename itself durable. The data is already in place, so failures say so. */
function* syncDirectory(directory: string, fsType: number): Plan<void> {
  if (process.platform === "win32") return; // Windows cannot open a directory for fsync: NTFS journals renames
  try {
    const fd = (yield (sys) => sys.open(directory, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY, 0)) as number;
    try {
      yield flush(fd, isInMemory(fsType));
    } finally {
      yield quietly((sys) => sys.close(fd));
    }
  } catch (error) {
    (error as AtomicWriteError).published = true;
    throw error;
  }
}

// ---------------------------------------------------------------------------------------------
// System calls through libc (Linux, Bun). Through node:fs each call also builds objects (Stats with
// dates, argument checks) that are garbage soon after. libc also gives what node:fs lacks:
// anonymous temps (an O_TMPFILE inode has no name until it is complete, so a kill -9 or a power cut
// mid-write leaves nothing behind), the append-only check of a directory, and the close error of a
// temp. Elsewhere, and with ATOMIC_WRITE_FFI=0, node:fs runs the same protocol with named temps,
// without those three.

const O_TMPFILE = 0o20200000; // x86-64 and aarch64 (node:fs does not export it)
const O_CLOEXEC = 0o2000000; // so a child spawned meanwhile does not inherit a temp
const AT_FDCWD = -100;
const AT_SYMLINK_NOFOLLOW = 0x100;
const AT_SYMLINK_FOLLOW = 0x400;
const AT_EMPTY_PATH = 0x1000;
const STATX_BASIC_STATS = 0x7ff;
const STATX_ATTR_APPEND = 0x20;
const EMPTY = Buffer.from([0]);
/** Counts above this are split: results then fit an i32, and the kernel moves < 2 GiB a call anyway. */
const MAX_IO = 1 << 30;
const PATH_MAX = 4096;
/** Whether linkat(fd, "", ..., AT_EMPTY_PATH) works here; false after its first refusal. */
let linkByDescriptor = true;
const BTRFS_MAGIC = 0x9123683e;
const TMPFS_MAGIC = 0x01021994;
const RAMFS_MAGIC = 0x858458f6;
/** What open(O_TMPFILE) answers where the kernel or the file system does not support it. */
const NO_ANONYMOUS_TEMPS: ReadonlySet<string> = new Set(["EOPNOTSUPP", "ENOTSUP", "EISDIR", "EINVAL", "ENOSYS"]);

let native: Ops | null | undefined;

/** The system calls this write runs on: libc where it can be had, else node:fs. */
function syscalls(): Ops {
  if (process.env.ATOMIC_WRITE_FFI === "0") return ops; // the portable layer, for tests and users
  if (native === undefined) native = loadLibc();
  return native ?? ops;
}

/** libc through bun:ffi, loaded on first use; null where it cannot be had (Node, no libc, ...). */
function loadLibc(): Ops | null {
  if (process.platform !== "linux" || !["x64", "arm64"].includes(process.arch) || !process.versions.bun) return null;
  try {
    return libcCalls(process.getBuiltinModule("bun:ffi") as typeof import("bun:ffi"));
  } catch {
    return null;
  }
}

function libcCalls({ FFIType, dlopen, read }: typeof import("bun:ffi")): Ops {
  const { i32, u32, u64, i64, ptr, cstring } = FFIType;
  // ssize_t results are declared i32: every count asked for is below MAX_IO, and -1 stays -1.
  const { symbols: c } = dlopen("libc.so.6", {
    statx: { args: [i32, ptr, i32, u32, ptr], returns: i32 },
    readlink: { args: [ptr, ptr, u64], returns: i32 },
    open: { args: [ptr, i32, u32], returns: i32 },
    write: { args: [i32, ptr, u64], returns: i32 },
    pread: { args: [i32, ptr, u64, i64], returns: i32 },
    fchown: { args: [i32, i32, i32], returns: i32 },
    fchmod: { args: [i32, u32], returns: i32 },
    fsync: { args: [i32], returns: i32 },
    fdatasync: { args: [i32], returns: i32 },
    close: { args: [i32], returns: i32 },
    rename: { args: [ptr, ptr], returns: i32 },
    unlink: { args: [ptr], returns: i32 },
    linkat: { args: [i32, ptr, i32, ptr, i32], returns: i32 },
    statfs: { args: [ptr, ptr], returns: i32 },
    strerror: { args: [i32], returns: cstring },
    __errno_location: { args: [], returns: ptr },
  });

  /**
   * After a call returned -1: returns on EINTR (a signal: the caller retries the call), else throws
   * the SystemError its errno names. Each call is retried by a loop of its own, not by a helper
   * taking it as a closure: one allocation and one call less for each of a write's system calls.
   */
  const failed = (syscall: string, path?: string): void => {
    const errno = read.i32(c.__errno_location() as NonNullable<ReturnType<typeof c.__errno_location>>, 0);
    const code = errnoCodes().get(errno) ?? `E${errno}`;
    if (code === "EINTR") return;
    const text = ERRNO_TEXT[code] ?? String(c.strerror(errno)).replace(/^./, (first) => first.toLowerCase());
    throw systemError(code, text, syscall, path);
  };
  const stat = Buffer.alloc(256); // struct statx: the same layout on every architecture
  const info = (): FileInfo => ({
    mode: stat.readUInt16LE(28),
    uid: stat.readUInt32LE(20),
    gid: stat.readUInt32LE(24),
    size: stat.readUInt32LE(40) + stat.readUInt32LE(44) * 2 ** 32,
  });
  const link = Buffer.alloc(PATH_MAX + 1);
  const fileSystem = Buffer.alloc(256); // struct statfs: f_type first, a long, on x86-64 and aarch64
  const view = (data: Uint8Array, offset: number, length: number): Uint8Array =>
    offset === 0 && length === data.byteLength ? data : data.subarray(offset, offset + length);
  const write = (fd: number, data: Uint8Array, offset: number, length: number): number => {
    const piece = view(data, offset, Math.min(length, MAX_IO));
    for (;;) {
      const written = c.write(fd, piece, piece.byteLength);
      if (written >= 0) return written;
      failed("write");
    }
  };
  const fsync = (fd: number): void => {
    while (c.fsync(fd) < 0) failed("fsync");
  };

  return {
    ...ops,
    lstat: (path) => {
      const name = cString(path);
      while (c.statx(AT_FDCWD, name, AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS, stat) < 0) failed("lstat", path);
      return info();
    },
    fstat: (fd) => {
      while (c.statx(fd, EMPTY, AT_EMPTY_PATH, STATX_BASIC_STATS, stat) < 0) failed("fstat");
      // stx_mtime: tv_sec (i64) at 112, tv_nsec (u32) at 120.
      return { ...info(), modified: `${stat.readBigInt64LE(112) * 1_000_000_000n + BigInt(stat.readUInt32LE(120))}` };
    },
    readlink: (path) => {
      const name = cString(path);
      for (;;) {
        const length = c.readlink(name, link, link.byteLength);
        if (length > PATH_MAX) throw systemError("ENAMETOOLONG", "name too long", "readlink", path);
        if (length >= 0) return link.toString("utf8", 0, length);
        failed("readlink", path);
      }
    },
    open: (path, flags, mode) => {
      const name = cString(path);
      for (;;) {
        const fd = c.open(name, flags | O_CLOEXEC, mode);
        if (fd >= 0) return fd;
        failed("open", path);
      }
    },
    write,
    writeInMemory: write,
    read: (fd, into, offset, length, position) => {
      const piece = view(into, offset, Math.min(length, MAX_IO));
      for (;;) {
        const read = c.pread(fd, piece, piece.byteLength, position);
        if (read >= 0) return read;
        failed("read");
      }
    },
    fchown: (fd, uid, gid) => {
      while (c.fchown(fd, uid, gid) < 0) failed("fchown");
    },
    fchmod: (fd, mode) => {
      while (c.fchmod(fd, mode) < 0) failed("fchmod");
    },
    fsync,
    fsyncInline: fsync,
    fdatasync: (fd) => {
      while (c.fdatasync(fd) < 0) failed("fdatasync");
    },
    // Never retried: Linux releases the descriptor even when close fails, and it may be reused.
    close: (fd) => {
      if (c.close(fd) < 0) failed("close");
    },
    rename: (from, to) => {
      const [source, destination] = [cString(from), cString(to, 1)];
      while (c.rename(source, destination) < 0) failed("rename", from);
    },
    unlink: (path) => {
      const name = cString(path);
      while (c.unlink(name) < 0) failed("unlink", path);
    },
    statfsType: (path) => {
      const name = cString(path);
      while (c.statfs(name, fileSystem) < 0) failed("statfs", path);
      return fileSystem.readUInt32LE(0);
    },
    appendOnly: (directory) => {
      const name = cString(directory);
      while (c.statx(AT_FDCWD, name, 0, STATX_BASIC_STATS, stat) < 0) failed("stat", directory);
      return (stat.readUInt32LE(8) & STATX_ATTR_APPEND) !== 0; // stx_attributes, low half
    },
    openAnonymous: (directory, mode) => {
      const name = cString(directory);
      for (;;) {
        const fd = c.open(name, O_TMPFILE | O_CLOEXEC | fs.constants.O_WRONLY, mode);
        if (fd >= 0) return fd;
        failed("open", directory);
      }
    },
    linkAnonymous: (fd, path) => {
      const name = cString(path);
      // By the descriptor itself where the kernel allows it (Linux >= 6.10, or CAP_DAC_READ_SEARCH):
      // it skips a path walk through /proc, which costs more than the rest of the call.
      if (linkByDescriptor) {
        try {
          while (c.linkat(fd, EMPTY, AT_FDCWD, name, AT_EMPTY_PATH) < 0) failed("linkat", path);
          return;
        } catch (error) {
          // Kernels before 6.10 refuse it (ENOENT for an unprivileged caller, EINVAL or EPERM elsewhere):
          // the /proc path then reports whatever error is the write's own.
          if (!["ENOENT", "EINVAL", "EPERM"].includes((error as NodeJS.ErrnoException).code as string)) throw error;
          linkByDescriptor = false;
        }
      }
      const byProc = cString(`/proc/self/fd/${fd}`, 1);
      while (c.linkat(AT_FDCWD, byProc, AT_FDCWD, name, AT_SYMLINK_FOLLOW) < 0) failed("linkat", path);
    },
  };
}

/** libuv's wording, so that messages read the same through either layer. */
const ERRNO_TEXT: Record<string, string> = {
  ENOENT: "no such file or directory",
  EACCES: "permission denied",
  EPERM: "operation not permitted",
  EROFS: "read-only file system",
  ENOSPC: "no space left on device",
  EDQUOT: "disk quota exceeded",
  EFBIG: "file too large",
  EIO: "i/o error",
  ENOTDIR: "not a directory",
  EISDIR: "illegal operation on a directory",
  ELOOP: "too many symbolic links encountered",
  ENAMETOOLONG: "name too long",
  EMFILE: "too many open files",
  EEXIST: "file already exists",
  EXDEV: "cross-device link not permitted",
  EBUSY: "resource busy or locked",
  // Worded "unknown error" by Bun's node:fs too; NFS and a damaged file system report them at fsync.
  ESTALE: "stale file handle",
  EUCLEAN: "structure needs cleaning",
  EBADMSG: "bad message",
  ENOLCK: "no locks available",
  ENOLINK: "link has been severed",
  ECOMM: "communication error on send",
};

let codes: Map<number, string> | undefined;

/** errno numbers back to their codes (node:util's map would cost start-up time for a rare path). */
function errnoCodes(): Map<number, string> {
  codes ??= new Map(Object.entries(errnoNumbers()).map(([code, errno]) => [errno, code]));
  return codes;
}

/** Two reused buffers for a call's path arguments: a fresh Buffer per path is garbage to collect. */
const cStrings = [Buffer.allocUnsafe(3 * PATH_MAX + 1), Buffer.allocUnsafe(3 * PATH_MAX + 1)] as const;

/** A NUL-terminated UTF-8 copy of `text`, valid until the next call that uses the same slot. */
function cString(text: string, slot: 0 | 1 = 0): Buffer {
  const scratch = cStrings[slot];
  // Three UTF-8 bytes at most per UTF-16 unit; a longer path fails in the kernel, in a fresh buffer.
  if (text.length * 3 >= scratch.byteLength) return Buffer.from(`${text}\0`);
  scratch[scratch.write(text)] = 0;
  return scratch;
}

interface DirectoryTraits {
  anonymous: boolean;
  /** Names can be added but not removed (chattr +a): a temp there could never be cleaned up. */
  appendOnly?: boolean;
  /** statfs f_type of the directory's file system, once asked. */
  fsType?: number;
}

const traits = new Map<string, DirectoryTraits>();

/** What a directory's file system supports, probed once and remembered. */
function directoryTraits(directory: string): DirectoryTraits {
  let known = traits.get(directory);
  if (!known) {
    if (traits.size >= 4096) traits.clear(); // a bound, for programs that write to endless directories
    known = { anonymous: true };
    traits.set(directory, known);
  }
  return known;
}

/**
 * A directory where names can be added but never removed (chattr +a) would keep the temp: the
 * rename fails there, and so would removing the temp after it. Asked once per directory, before
 * any temp exists; a directory that cannot be asked is left to createTemp to report.
 */
function* refuseAppendOnly(traits: DirectoryTraits, target: Target): Plan<void> {
  try {
    traits.appendOnly ??= (yield (sys) => sys.appendOnly(target.directory)) as boolean;
  } catch {
    return;
  }
  if (traits.appendOnly) {
    throw systemError("EPERM", "operation not permitted (the directory is append-only)", "rename", target.path);
  }
}

function anonymousTempsAllowed(directory: string): boolean {
  if (process.env.ATOMIC_WRITE_TMPFILE === "0") return false; // forced named temps, for tests and users
  return syscalls() !== ops && directoryTraits(directory).anonymous;
}

function isInMemory(fsType: number): boolean {
  return fsType === TMPFS_MAGIC || fsType === RAMFS_MAGIC;
}

/**
 * fsync. On a file system in memory (tmpfs, ramfs) it returns at once, so the async driver runs it
 * inline: a hop to the thread pool would cost more than the call.
 */
function flush(fd: number, inMemory: boolean): Call {
  return inMemory ? (sys) => sys.fsyncInline(fd) : (sys) => sys.fsync(fd);
}

// ---------------------------------------------------------------------------------------------
// ifChanged: compare the new bytes with the target as they arrive, and write only on a difference.

interface Replay {
  /** The target, open for reading: the bytes that matched so far are copied from it. */
  fd: number;
  /** Its size and modification time when the comparison began (see copyPrefix). */
  size: number;
  modified: string | undefined;
  /** How many leading bytes matched before the difference. */
  matched: number;
  /** The chunk in which the difference was found (not yet written). */
  pendingChunk?: Uint8Array;
}

const COMPARE_PIECE = 1024 * 1024;

function* compareWithTarget(
  target: Target,
  chunks: Chunks,
  length: number | undefined,
  mode: number | undefined,
): Plan<Replay | "unchanged" | undefined> {
  const old = target.existing as FileInfo;
  if ((old.mode & 0o7777) !== mode) return undefined;
  if (length !== undefined && length !== old.size) return undefined;
  let fd: number;
  try {
    // O_NONBLOCK: a target swapped for a FIFO since it was checked would block this open forever.
    const flags = fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK;
    fd = (yield (sys) => sys.open(target.path, flags, 0)) as number;
  } catch {
    return undefined; // a target we may not read is simply replaced
  }
  try {
    const { mode: kind, size, modified } = (yield (sys) => sys.fstat(fd)) as FileInfo;
    if ((kind & S_IFMT) !== S_IFREG) throw systemError("EINVAL", "not a regular file", "open", target.path);
    const scratch = Buffer.allocUnsafe(Math.min(COMPARE_PIECE, Math.max(size, 1)));
    let matched = 0;
    for (;;) {
      const next = (yield (sys) => sys.next(chunks)) as IteratorResult<Uint8Array>;
      if (next.done) {
        if (matched === size) {
          yield quietly((sys) => sys.close(fd));
          return "unchanged";
        }
        return { fd, size, modified, matched };
      }
      if (!(yield* sameBytes(fd, matched, next.value, scratch))) {
        return { fd, size, modified, matched, pendingChunk: next.value };
      }
      matched += next.value.byteLength;
    }
  } catch (error) {
    yield quietly((sys) => sys.close(fd));
    throw error;
  }
}

function* sameBytes(fd: number, position: number, chunk: Uint8Array, scratch: Buffer): Plan<boolean> {
  for (let offset = 0; offset < chunk.byteLength; ) {
    const want = Math.min(scratch.byteLength, chunk.byteLength - offset);
    const got = (yield (sys) => sys.read(fd, scratch, 0, want, position + offset)) as number;
    if (got === 0) return false;
    if (Buffer.compare(scratch.subarray(0, got), chunk.subarray(offset, offset + got)) !== 0) return false;
    offset += got;
  }
  return true;
}

/**
 * After a difference: the matched prefix comes from the target, then the chunk that differed. The
 * prefix is read again, and a program writing into the target in place meanwhile would have it
 * publish bytes the caller never gave: a target whose size or modification time is no longer what
 * it was when the comparison began fails the write instead. Not its status change time, which
 * another writer's rename over the target also moves (the old file loses a link), and which must
 * not fail this write. (Since Linux 6.13 the kernel gives a change after a stat a time of its own,
 * so even one within the same clock tick is seen.)
 */
function* copyPrefix(replay: Replay, temp: Temp): Plan<void> {
  const scratch = Buffer.allocUnsafe(Math.min(COMPARE_PIECE, Math.max(replay.matched, 1)));
  for (let position = 0; position < replay.matched; ) {
    const want = Math.min(scratch.byteLength, replay.matched - position);
    const got = (yield (sys) => sys.read(replay.fd, scratch, 0, want, position)) as number;
    if (got === 0) throw systemError("EAGAIN", "the target shrank while it was being compared", "read", undefined);
    yield* writeChunk(temp, scratch.subarray(0, got));
    position += got;
  }
  const now = (yield (sys) => sys.fstat(replay.fd)) as FileInfo;
  if (now.size !== replay.size || now.modified !== replay.modified) {
    throw systemError("EAGAIN", "the target changed while it was being compared", "fstat", undefined);
  }
  if (replay.pendingChunk) yield* writeChunk(temp, replay.pendingChunk);
}

// ---------------------------------------------------------------------------------------------

/** Errors made here, whose text says what happened (see reason). */
const described = new WeakSet<Error>();

function systemError(code: string, text: string, syscall: string, path: string | undefined): NodeJS.ErrnoException {
  const where = path === undefined ? syscall : `${syscall} '${path}'`;
  const error = new Error(`${code}: ${text}, ${where}`) as NodeJS.ErrnoException;
  described.add(error);
  error.code = code;
  const errno = errnoNumbers()[code];
  if (errno !== undefined) error.errno = -errno;
  error.syscall = syscall;
  if (path !== undefined) error.path = path;
  return error;
}

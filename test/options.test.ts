/**
 * The options of every write function (SPEC "Beyond the seed"): `ifChanged` (an identical write
 * touches nothing, not even a watcher; any difference writes normally) and `durable: false` (no
 * fsync or fdatasync at all, seen in a syscall trace, yet the right contents).
 */
import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import * as fs from "node:fs";
import { basename, join } from "node:path";
import {
  atomicWriteBytes,
  atomicWriteBytesAsync,
  atomicWriteMany,
  atomicWriteManyAsync,
  atomicWriteStream,
  atomicWriteText,
  atomicWriteTextAsync,
  type WriteOptions,
} from "../index.ts";
import {
  type ChildWrite,
  childRequest,
  cleanup,
  has,
  modeOf,
  snapshot,
  TEMP_KINDS,
  TIMEOUT_MS,
  tempDir,
  tempResidue,
  tracedWrite,
  useTempKind,
  writeInChild,
} from "./helpers.ts";

setDefaultTimeout(TIMEOUT_MS);
afterAll(cleanup);

const KIB = 1024;

interface Writer {
  name: ChildWrite["fn"];
  write(path: string, data: string, options: WriteOptions): Promise<void>;
}

/** Every write function, called with UTF-8 text turned into its own kind of data. */
const WRITERS: Writer[] = [
  { name: "atomicWriteText", write: async (path, data, options) => atomicWriteText(path, data, options) },
  {
    name: "atomicWriteBytes",
    write: async (path, data, options) => atomicWriteBytes(path, Buffer.from(data), options),
  },
  { name: "atomicWriteTextAsync", write: (path, data, options) => atomicWriteTextAsync(path, data, options) },
  {
    name: "atomicWriteBytesAsync",
    write: (path, data, options) => atomicWriteBytesAsync(path, Buffer.from(data), options),
  },
  {
    name: "atomicWriteStream",
    write: (path, data, options) => {
      const bytes = Buffer.from(data);
      const third = Math.max(1, Math.ceil(bytes.length / 3));
      async function* thirds() {
        for (let at = 0; at < bytes.length; at += third) yield bytes.subarray(at, at + third);
      }
      return atomicWriteStream(path, thirds(), options);
    },
  },
];

const OLD_TIME = new Date("2001-02-03T04:05:06Z");

/** A target holding `data` with mode 0o640 and an mtime far in the past, so any rewrite shows. */
function target(data: string | Uint8Array): { dir: string; file: string } {
  const dir = tempDir("opts-");
  const file = join(dir, "out.txt");
  fs.writeFileSync(file, data);
  fs.chmodSync(file, 0o640);
  fs.utimesSync(file, OLD_TIME, OLD_TIME);
  return { dir, file };
}

/** Inode, times and mode, in nanoseconds: what an untouched file keeps. */
function identity(file: string) {
  const stat = fs.statSync(file, { bigint: true });
  return { ino: stat.ino, mtimeNs: stat.mtimeNs, ctimeNs: stat.ctimeNs, mode: stat.mode & 0o7777n };
}

/** A real inotify watch (fs.watch) on a directory, proven live before it is relied on. */
async function watchDirectory(dir: string) {
  const events: string[] = [];
  let probed = false;
  // The probe's own events are kept out of `events`: its create and its truncate may come in two
  // reads of the inotify queue, the second after the test has started listening for silence.
  const watcher = fs.watch(dir, (type, name) => {
    if (name === "probe") probed = true;
    else events.push(`${type} ${name}`);
  });
  const until = async (seen: () => boolean, ms: number) => {
    for (const deadline = Date.now() + ms; !seen() && Date.now() < deadline; ) await Bun.sleep(10);
    return seen();
  };
  fs.writeFileSync(join(dir, "probe"), "");
  if (!(await until(() => probed, 2000))) {
    watcher.close();
    throw new Error("fs.watch never reported the probe file: the watcher is not working");
  }
  return { events, until, close: () => watcher.close() };
}

/** Long enough for inotify to deliver an event of a write that did happen (it takes milliseconds). */
const QUIET_MS = 200;

describe.each(TEMP_KINDS)("ifChanged: true, with $name,", ({ env }) => {
  useTempKind(env);

  for (const writer of WRITERS) {
    test(`${writer.name}: identical bytes and mode keep inode, mtime and ctime, and wake no watcher`, async () => {
      const content = "unchanged output\nwith ünïcödé\n";
      const { dir, file } = target(content);
      const watch = await watchDirectory(dir);
      try {
        const before = identity(file);
        const state = snapshot(dir);
        await writer.write(file, content, { ifChanged: true });
        await writer.write(file, content, { ifChanged: true, mode: 0o640 }); // the same mode, said explicitly
        await Bun.sleep(QUIET_MS);
        expect(watch.events).toEqual([]);
        expect(identity(file)).toEqual(before);
        expect(snapshot(dir)).toEqual(state);

        // The same watcher does see a write that changes something: its silence above meant something.
        await writer.write(file, `${content}!`, { ifChanged: true });
        expect(await watch.until(() => watch.events.length > 0, 2000)).toBe(true);
        expect(fs.readFileSync(file, "utf8")).toBe(`${content}!`);
        expect(identity(file).ino).not.toBe(before.ino);
      } finally {
        watch.close();
      }
    });

    const differences: [string, string, string, number | undefined][] = [
      ["the content differs at the same length", "hello, world", "hello, World", undefined],
      ["the new content is longer", "hello, world", "hello, world, and more", undefined],
      ["the new content is shorter", "hello, world", "hello", undefined],
      ["the new content is empty", "hello, world", "", undefined],
      ["only the explicit mode differs", "hello, world", "hello, world", 0o600],
    ];
    for (const [what, old, next, mode] of differences) {
      test(`${writer.name}: writes normally when ${what}`, async () => {
        const { dir, file } = target(old);
        const before = identity(file);
        await writer.write(file, next, mode === undefined ? { ifChanged: true } : { ifChanged: true, mode });
        expect(fs.readFileSync(file, "utf8")).toBe(next);
        expect(modeOf(file)).toBe(mode ?? 0o640);
        const after = identity(file);
        expect(after.ino).not.toBe(before.ino); // replaced by a new file, not patched in place
        expect(after.mtimeNs).not.toBe(before.mtimeNs);
        expect(tempResidue(dir)).toEqual([]);
      });
    }

    test(`${writer.name}: identical bytes keep a file whose mode has setuid, setgid or sticky bits`, async () => {
      for (const mode of [0o4755, 0o2750, 0o1644, 0o6711]) {
        const { file } = target("special bits\n");
        fs.chmodSync(file, mode);
        const before = identity(file);
        await writer.write(file, "special bits\n", { ifChanged: true });
        await writer.write(file, "special bits\n", { ifChanged: true, mode });
        expect([mode.toString(8), identity(file)]).toEqual([mode.toString(8), before]);
      }
    });

    test(`${writer.name}: writes a target that does not exist yet`, async () => {
      const dir = tempDir("opts-");
      const file = join(dir, "new.txt");
      await writer.write(file, "fresh", { ifChanged: true });
      expect(fs.readFileSync(file, "utf8")).toBe("fresh");
    });
  }

  // Buffer.byteLength only estimates these (line breaks, padding, stray characters): a count taken
  // from it would call identical bytes different.
  const estimated: [string, BufferEncoding][] = [
    ["aGVsbG8g\nd29ybGQ=\n", "base64"],
    ["aGVsbG8gd29ybGQ", "base64"], // unpadded
    ["68656c6c6f20776f726c64zz", "hex"], // a trailing pair that is not hex is dropped
  ];
  const textWriters: [string, (path: string, data: string, encoding: BufferEncoding) => unknown][] = [
    ["atomicWriteText", (path, data, encoding) => atomicWriteText(path, data, { encoding, ifChanged: true })],
    ["atomicWriteTextAsync", (path, data, encoding) => atomicWriteTextAsync(path, data, { encoding, ifChanged: true })],
    ["atomicWriteMany", (path, data, encoding) => atomicWriteMany([{ path, data, encoding }], { ifChanged: true })],
    [
      "atomicWriteManyAsync",
      (path, data, encoding) => atomicWriteManyAsync([{ path, data, encoding }], { ifChanged: true }),
    ],
  ];
  for (const [name, write] of textWriters) {
    test(`${name}: identical bytes given as base64 or hex text keep the inode and mtime`, async () => {
      for (const [text, encoding] of estimated) {
        const { file } = target("hello world");
        const before = identity(file);
        await write(file, text, encoding);
        expect([text, identity(file)]).toEqual([text, before]);
      }
    });
  }

  // Text in an encoding other than UTF-8: its bytes are counted in that encoding, not as UTF-8.
  const encoded: [string, BufferEncoding][] = [
    ["hello, wörld", "utf16le"],
    ["hello, wörld", "ucs2"],
    ["hello, wörld", "latin1"],
    ["hello, world", "ascii"],
  ];
  for (const [name, write] of textWriters) {
    test(`${name}: identical bytes given as UTF-16LE, Latin-1 or ASCII text keep the inode and mtime`, async () => {
      for (const [text, encoding] of encoded) {
        const { file } = target(Buffer.from(text, encoding));
        const before = identity(file);
        await write(file, text, encoding);
        expect([encoding, identity(file)]).toEqual([encoding, before]);
      }
    });
  }

  describe("a stream, compared chunk by chunk as it arrives", () => {
    const CHUNK = 300 * KIB; // several compare pieces' worth of chunks, above the thread-pool threshold
    // Pseudo-random bytes (xorshift32), with no period: a prefix copied from the wrong offset of the
    // target shows. ((i * 13 + (i >> 10)) & 0xff repeated every 256 KiB, and hid exactly that.)
    const original = Buffer.alloc(8 * CHUNK + 1234);
    for (let i = 0, x = 0x9e3779b9; i < original.length; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      original[i] = x & 0xff;
    }

    function chunked(data: Buffer, sizes: number[]): () => AsyncGenerator<Uint8Array> {
      return async function* () {
        let at = 0;
        for (const size of sizes) {
          yield data.subarray(at, at + size);
          at += size;
        }
        if (at < data.length) yield data.subarray(at);
      };
    }
    const evenly = (data: Buffer) =>
      chunked(
        data,
        Array.from({ length: Math.ceil(data.length / CHUNK) }, () => CHUNK),
      );

    test("with a difference in a late chunk, writes the full correct content", async () => {
      const { file } = target(original);
      const changed = Buffer.from(original);
      changed[7 * CHUNK + 5000] = (changed[7 * CHUNK + 5000] as number) ^ 0xff;
      const before = identity(file);
      await atomicWriteStream(file, evenly(changed)(), { ifChanged: true });
      expect(fs.readFileSync(file).equals(changed)).toBe(true);
      expect(identity(file).ino).not.toBe(before.ino);
    });

    test("with a difference inside a chunk larger than the compare buffer, writes the full correct content", async () => {
      const { file } = target(original);
      const changed = Buffer.from(original);
      changed[2 * 1024 * KIB + 17] = (changed[2 * 1024 * KIB + 17] as number) ^ 0x01;
      await atomicWriteStream(file, chunked(changed, [1, 2, 3 * 1024 * KIB])(), { ifChanged: true });
      expect(fs.readFileSync(file).equals(changed)).toBe(true);
    });

    test("identical bytes cut into different chunks leave the file untouched", async () => {
      const { file } = target(original);
      const before = identity(file);
      await atomicWriteStream(file, chunked(original, [1, 7, 3 * 1024 * KIB, 5, CHUNK])(), { ifChanged: true });
      expect(identity(file)).toEqual(before);
    });

    test("a stream that stops short of the target's end (a prefix of it) replaces it", async () => {
      const { file } = target(original);
      const prefix = original.subarray(0, 6 * CHUNK + 99);
      await atomicWriteStream(file, evenly(Buffer.from(prefix))(), { ifChanged: true });
      expect(fs.readFileSync(file).equals(prefix)).toBe(true);
    });

    test("a stream that goes on past the target's end replaces it", async () => {
      const { file } = target(original);
      const longer = Buffer.concat([original, Buffer.from("tail")]);
      await atomicWriteStream(file, evenly(longer)(), { ifChanged: true });
      expect(fs.readFileSync(file).equals(longer)).toBe(true);
    });

    /** What another program leaves in the target: written into in place, or cut short. */
    const inPlace = Buffer.concat([Buffer.from("ZZZZ"), original.subarray(4)]);
    const cutShort = original.subarray(0, CHUNK);
    test.each([
      ["written into in place", inPlace, "changed"],
      ["cut short", cutShort, "shrank"],
    ] as const)(
      "fails with EAGAIN and publishes nothing when the target is %s while it is compared",
      async (_how, left, said) => {
        const { dir, file } = target(original);
        async function* source() {
          yield original.subarray(0, 2 * CHUNK); // matches, so it is copied from the target later
          // Another program changes the target (the same inode) while the stream waits.
          const fd = fs.openSync(file, "r+");
          if (left === inPlace) fs.writeSync(fd, inPlace, 0, 4, 0);
          else fs.ftruncateSync(fd, left.length);
          fs.closeSync(fd);
          yield Buffer.alloc(CHUNK, 1); // the first difference: the matched prefix is read again
        }
        const error = (await atomicWriteStream(file, source(), { ifChanged: true }).catch((e) => e)) as
          | NodeJS.ErrnoException
          | undefined;
        expect(error?.code).toBe("EAGAIN");
        expect(error?.message).toContain(file);
        expect(error?.message).toContain(`the target ${said} while it was being compared`);
        // The other program's bytes stand, and no mix of them with the stream's was published.
        expect(fs.readFileSync(file).equals(left)).toBe(true);
        expect(fs.readdirSync(dir)).toEqual([basename(file)]);
      },
    );

    test("goes on when another writer replaces the target by rename while it is compared", async () => {
      const { dir, file } = target(original);
      const stream = Buffer.concat([original.subarray(0, 2 * CHUNK), Buffer.alloc(CHUNK, 1)]);
      async function* source() {
        yield stream.subarray(0, 2 * CHUNK); // matches the old file, copied from it later
        atomicWriteBytes(file, Buffer.from("another writer's whole file")); // the old file loses its name
        yield stream.subarray(2 * CHUNK); // the first difference
      }
      await atomicWriteStream(file, source(), { ifChanged: true });
      expect(fs.readFileSync(file).equals(stream)).toBe(true);
      expect(fs.readdirSync(dir)).toEqual([basename(file)]);
    });

    test("a source that throws after a late difference leaves the target intact and no temp", async () => {
      const { dir, file } = target(original);
      const state = snapshot(dir);
      const thrown = new Error("source failed after the difference");
      async function* source() {
        yield original.subarray(0, CHUNK);
        yield Buffer.alloc(CHUNK, 1); // differs: from here on the write is real
        yield Buffer.alloc(CHUNK, 2);
        throw thrown;
      }
      let caught: unknown;
      await atomicWriteStream(file, source(), { ifChanged: true }).catch((error) => {
        caught = error;
      });
      expect(caught).toBe(thrown);
      expect(snapshot(dir)).toEqual(state);
    });
  });
});

// ---------------------------------------------------------------------------------------------
// System calls, seen by strace in a child that makes one call.

/** The child's syscalls of interest, one per line, with file descriptors shown as paths (-y). */
function traced(request: ChildWrite, env: string | undefined): { trace: string[] } {
  const syscalls = "fsync,fdatasync,sync_file_range,syncfs,sync,msync,openat,open,rename,renameat,renameat2,linkat";
  return { trace: tracedWrite(request, syscalls, env === undefined ? {} : { ATOMIC_WRITE_TMPFILE: env }) };
}

const FLUSH = /\b(fsync|fdatasync|sync_file_range|syncfs|sync|msync)\(/;

describe.skipIf(!has("strace"))("durable: false (strace in a child)", () => {
  for (const { name: kind, env } of TEMP_KINDS) {
    for (const { name } of WRITERS) {
      test(`${name} with ${kind}: no fsync or fdatasync at all, and still the right content`, () => {
        const { dir, file } = target("old contents");
        const { trace } = traced(childRequest(name, file, "new contents", { durable: false }), env);
        expect(trace.filter((line) => FLUSH.test(line))).toEqual([]);
        // The trace did see the write itself, so its silence about flushes is not a blind spot.
        expect(trace.some((line) => /rename/.test(line) && line.includes(file))).toBe(true);
        expect(fs.readFileSync(file, "utf8")).toBe("new contents");
        expect(modeOf(file)).toBe(0o640);
        expect(tempResidue(dir)).toEqual([]);
      });
    }
  }

  const defaults: [string, Record<string, unknown>][] = [
    ["by default", {}],
    ["given durable: null (unset, as mode: null is)", { durable: null, ifChanged: null }],
  ];
  for (const { name } of WRITERS) {
    test.each(defaults)(`${name} %s flushes the file and its directory (the check above can fail)`, (_how, options) => {
      const { dir, file } = target("old contents");
      const { trace } = traced(childRequest(name, file, "new contents", options), undefined);
      const flushes = trace.filter((line) => FLUSH.test(line));
      expect(flushes.length).toBeGreaterThanOrEqual(2);
      expect(flushes.some((line) => line.includes(`<${dir}>`))).toBe(true); // the directory, by its fd
      expect(fs.readFileSync(file, "utf8")).toBe("new contents");
    });
  }
});

describe.skipIf(!has("strace"))("ifChanged: true on an identical target (strace in a child)", () => {
  for (const { name } of WRITERS) {
    test(`${name}: makes no temp, no rename and no flush`, () => {
      const { dir, file } = target("same contents");
      const before = identity(file);
      const { trace } = traced(childRequest(name, file, "same contents", { ifChanged: true }), undefined);
      const inDir = trace.filter((line) => line.includes(dir));
      expect(inDir.filter((line) => /O_CREAT|O_TMPFILE|O_WRONLY|O_RDWR|rename|linkat/.test(line))).toEqual([]);
      expect(trace.filter((line) => FLUSH.test(line))).toEqual([]);
      // It did look: the target was opened for reading, to compare.
      expect(inDir.some((line) => line.includes(`"${file}"`) && line.includes("O_RDONLY"))).toBe(true);
      expect(identity(file)).toEqual(before);
    });
  }
});

describe.skipIf(!has("strace") || !has("mkfifo"))("ifChanged: true on a target swapped for a FIFO", () => {
  test.each(["atomicWriteText", "atomicWriteBytesAsync", "atomicWriteStream"] as const)(
    "%s fails with EINVAL, without blocking, when the swap comes after the target was checked",
    (fn) => {
      const { dir, file } = target("old contents");
      // The child's open of the target to compare it waits a second; meanwhile a shell puts a FIFO
      // in its place. Opened without O_NONBLOCK, a FIFO with no writer would block it forever.
      const swap = ["sh", "-c", '(sleep 0.3; rm -f "$0"; mkfifo "$0") & exec "$@"', file];
      const delay = ["strace", "-f", "-qq", "-o", "/dev/null", "-P", file, "-e", "trace=openat"];
      const wrap = [...swap, ...delay, "-e", "inject=openat:delay_enter=1000000"];
      const result = writeInChild(childRequest(fn, file, "old contents", { ifChanged: true }), {
        wrap,
        timeoutMs: 20_000,
      });
      expect([result.ok, result.code]).toEqual([false, "EINVAL"]);
      expect(result.message).toContain(file);
      expect(fs.lstatSync(file).isFIFO()).toBe(true);
      expect(fs.readdirSync(dir)).toEqual([basename(file)]);
    },
  );
});

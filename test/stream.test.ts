/**
 * atomicWriteStream (SPEC "Beyond the seed: streaming source"): every kind of source, bounded memory,
 * and the failure rules (the source's own error, foreign chunks, a full disk) on both temp protocols.
 */
import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import { join } from "node:path";
import { atomicWriteStream, atomicWriteTextAsync } from "../index.ts";
import {
  BUN,
  cleanup,
  has,
  isRoot,
  mountTmpfs,
  ROOT,
  ROOT_ONLY,
  snapshot,
  TEMP_KINDS,
  TIMEOUT_MS,
  tempDir,
  tempResidue,
  useTempKind,
} from "./helpers.ts";

setDefaultTimeout(TIMEOUT_MS);
afterAll(cleanup);

const KIB = 1024;
const MIB = 1024 * KIB;

/** Bytes that differ at every offset and per seed, so a misplaced or missing chunk shows. */
function pattern(size: number, seed = 0): Buffer {
  const bytes = Buffer.allocUnsafe(size);
  for (let i = 0; i < size; i++) bytes[i] = (i * 31 + seed * 7 + (i >> 8)) & 0xff;
  return bytes;
}

/**
 * Text of `length` UTF-16 units made by counting, with 2-, 3- and 4-byte UTF-8 characters: no
 * stretch repeats another, so a misplaced piece shows. Starts 0-2 units into a character, by seed:
 * some strings begin or end with half of a surrogate pair.
 */
function countingText(length: number, seed: number): string {
  let text = "";
  for (let i = seed * 100_000; text.length < length + 2; i++) text += `${i}é${i % 5 === 0 ? "😀" : "€"}`;
  return text.slice(seed % 3, length + (seed % 3));
}

function sha256(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

/** The error a promise rejects with; fails the test if it fulfils. */
async function rejectionOf(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error("expected the write to reject, but it succeeded");
}

/** A target with known contents and mode, in a fresh directory. */
function existingTarget(mode = 0o640): { dir: string; target: string } {
  const dir = tempDir("stream-");
  const target = join(dir, "target.bin");
  fs.writeFileSync(target, "previous contents\n");
  fs.chmodSync(target, mode);
  return { dir, target };
}

describe.each(TEMP_KINDS)("atomicWriteStream with $name", ({ env }) => {
  useTempKind(env);

  describe("takes its data from", () => {
    test("an async generator of byte chunks, in order, including empty and large chunks", async () => {
      const { target } = existingTarget();
      const chunks = [pattern(10, 1), new Uint8Array(0), pattern(200 * KIB, 2), pattern(1, 3), pattern(65 * KIB, 4)];
      async function* source() {
        for (const chunk of chunks) {
          await Bun.sleep(1); // a real async source yields to the event loop between chunks
          yield chunk;
        }
      }
      await atomicWriteStream(target, source());
      expect(sha256(fs.readFileSync(target))).toBe(sha256(Buffer.concat(chunks)));
      expect(tempResidue(join(target, ".."))).toEqual([]);
    });

    test("a sync iterable: an array, a generator and a Set, mixing bytes and strings", async () => {
      const { dir } = existingTarget();
      const fromArray = join(dir, "array");
      await atomicWriteStream(fromArray, [pattern(100, 1), "héllo", pattern(70 * KIB, 2)]);
      expect(fs.readFileSync(fromArray)).toEqual(
        Buffer.concat([pattern(100, 1), Buffer.from("héllo"), pattern(70 * KIB, 2)]),
      );

      const fromGenerator = join(dir, "generator");
      function* lines() {
        for (let i = 0; i < 1000; i++) yield `line ${i}\n`;
      }
      await atomicWriteStream(fromGenerator, lines());
      expect(fs.readFileSync(fromGenerator, "utf8")).toBe(Array.from(lines()).join(""));

      const fromSet = join(dir, "set");
      await atomicWriteStream(fromSet, new Set(["a", "b", "c"]));
      expect(fs.readFileSync(fromSet, "utf8")).toBe("abc");
    });

    test("many small chunks mixed with large, empty and string ones, every byte in order", async () => {
      const { dir } = existingTarget();
      // Sizes around the gathering thresholds (16 KiB alone, 64 KiB together), and a large string
      // whose last encoded piece is small.
      const sizes = [1, 100, 16 * KIB - 1, 16 * KIB, 0, 3, 64 * KIB - 5, 7, 64 * KIB, 64 * KIB + 1, 50, 2];
      const chunks: (Uint8Array | string)[] = sizes.map((size, i) => pattern(size, i));
      chunks.splice(5, 0, "é".repeat(300 * KIB + 3), "short text", "");
      for (let i = 0; i < 3000; i++) chunks.push(pattern(37, i));
      const expected = Buffer.concat(chunks.map((c) => (typeof c === "string" ? Buffer.from(c) : c)));
      async function* slowly() {
        for (const [i, chunk] of chunks.entries()) {
          if (i % 500 === 0) await Bun.sleep(1);
          yield chunk;
        }
      }
      for (const [name, source] of [
        ["sync", chunks],
        ["async", slowly()],
      ] as const) {
        const path = join(dir, name);
        await atomicWriteStream(path, source);
        expect([name, sha256(fs.readFileSync(path))]).toEqual([name, sha256(expected)]);
      }
    });

    test("a source that refills one small buffer for every chunk, each chunk kept as it was", async () => {
      const { target } = existingTarget();
      const buffer = Buffer.alloc(100);
      function* refilled() {
        for (let i = 0; i < 2000; i++) {
          buffer.fill(i & 0xff);
          yield buffer;
        }
      }
      await atomicWriteStream(target, refilled());
      const written = fs.readFileSync(target);
      expect(written.length).toBe(200_000);
      const wrong = [...Array(2000).keys()].filter((i) =>
        written.subarray(i * 100, i * 100 + 100).some((b) => b !== (i & 0xff)),
      );
      expect(wrong).toEqual([]);
    });

    test("string chunks encoded with options.encoding, byte chunks passed through unencoded", async () => {
      const dir = tempDir("stream-enc-");
      const text = ["Grüße, ", "世界 ", "😀", "\r\n", "plain"];
      for (const encoding of ["utf-8", "utf16le", "latin1", "ascii", "ucs2"] as const) {
        const path = join(dir, encoding);
        await atomicWriteStream(path, text, { encoding });
        expect(fs.readFileSync(path)).toEqual(Buffer.concat(text.map((piece) => Buffer.from(piece, encoding))));
      }
      // hex and base64: each chunk is decoded on its own, as Buffer.from would.
      const hex = join(dir, "hex");
      await atomicWriteStream(hex, ["deadbeef", "00ff"], { encoding: "hex" });
      expect(fs.readFileSync(hex)).toEqual(Buffer.from([0xde, 0xad, 0xbe, 0xef, 0x00, 0xff]));
      const base64 = join(dir, "base64");
      const raw = pattern(300);
      await atomicWriteStream(base64, [raw.subarray(0, 150).toString("base64"), raw.subarray(150)], {
        encoding: "base64",
      });
      expect(fs.readFileSync(base64).equals(raw)).toBe(true);
    });

    test("string chunks that grow and shrink, in every piecewise encoding, written exactly", async () => {
      const dir = tempDir("stream-sizes-");
      // Around the sizes where the write's one encoding buffer grows (1 KiB, then powers of two up
      // to 768 KiB, 3 bytes per unit) and where a string is split into pieces (256 Ki units).
      const lengths = [0, 1, 341, 342, 5_000, 21_846, 65_536, 100_001, 262_144, 262_145, 300_000, 7, 43_690, 1];
      const source = lengths.map(countingText);
      for (const encoding of ["utf-8", "utf16le", "latin1", "ascii"] as const) {
        const path = join(dir, encoding);
        // A byte chunk among them: the small pieces gathered before it go out first, in order.
        const mixed = [...source.slice(0, 6), pattern(20 * KIB), ...source.slice(6)];
        await atomicWriteStream(path, mixed, { encoding });
        const expected = Buffer.concat(
          mixed.map((piece) => (typeof piece === "string" ? Buffer.from(piece, encoding) : piece)),
        );
        expect([encoding, sha256(fs.readFileSync(path))]).toEqual([encoding, sha256(expected)]);
      }
    });

    test("with ifChanged, string chunks that differ from the target at or inside any chunk are written exactly, and so are the strings after the difference", async () => {
      const dir = tempDir("stream-ifchanged-strings-");
      const target = join(dir, "target.txt");
      // Strings too long to be gathered (copied), each encoded into the write's one reused buffer: the
      // chunk in which the difference is found must be written before the next string is encoded.
      const lengths = [40_000, 30_000, 65_536, 20_000, 300_000, 25_000];
      // UTF-8 has an encoder of its own; UTF-16LE goes through Buffer.write, as latin1 and ascii do.
      for (const encoding of ["utf-8", "utf16le"] as const) {
        const source = lengths.map(countingText);
        const expected = Buffer.concat(source.map((piece) => Buffer.from(piece, encoding)));
        const edges: number[] = [];
        for (let at = 0, index = 0; index < source.length; index++) {
          edges.push(at);
          at += Buffer.byteLength(source[index] as string, encoding);
        }
        // The first byte of each chunk, one inside it, and the last byte of the one before it.
        const offsets = edges.flatMap((edge) => [edge, edge + 1001, edge - 1]).filter((at) => at >= 0);
        const olds: [string, Buffer][] = offsets.map((at) => {
          const old = Buffer.from(expected);
          old[at] = (old[at] as number) ^ 0x20;
          return [`a byte changed at ${at}`, old];
        });
        for (const edge of edges.slice(1)) olds.push([`cut at ${edge}`, expected.subarray(0, edge)]);
        olds.push(["one byte longer", Buffer.concat([expected, Buffer.from("x")])]);
        for (const [what, old] of olds) {
          fs.writeFileSync(target, old);
          await atomicWriteStream(
            target,
            (async function* () {
              yield* source;
            })(),
            { encoding, ifChanged: true, durable: false },
          );
          expect([encoding, what, sha256(fs.readFileSync(target))]).toEqual([encoding, what, sha256(expected)]);
        }
        const before = fs.statSync(target, { bigint: true });
        await atomicWriteStream(target, source, { encoding, ifChanged: true });
        const after = fs.statSync(target, { bigint: true });
        expect([encoding, after.ino, after.mtimeNs]).toEqual([encoding, before.ino, before.mtimeNs]);
      }
    });

    test("a string chunk of megabytes whose surrogate pairs straddle the encoder's pieces", async () => {
      const dir = tempDir("stream-big-");
      const path = join(dir, "big.txt");
      // 😀 is two UTF-16 units: at odd offsets around every power of two one of them straddles a piece edge.
      const text = `${"a".repeat(262143)}😀${"😀é".repeat(300_000)}x`;
      await atomicWriteStream(path, ["start ", text]);
      expect(sha256(fs.readFileSync(path))).toBe(sha256(Buffer.from(`start ${text}`)));
      expect(fs.readFileSync(path, "utf8")).not.toContain("\uFFFD");
    });

    test("a web ReadableStream of bytes", async () => {
      const { target } = existingTarget();
      const chunks = Array.from({ length: 20 }, (_, i) => pattern(33 * KIB + i, i));
      let next = 0;
      const stream = new ReadableStream<Uint8Array>({
        async pull(controller) {
          await Bun.sleep(0);
          if (next < chunks.length) controller.enqueue(chunks[next++] as Uint8Array);
          else controller.close();
        },
      });
      await atomicWriteStream(target, stream);
      expect(sha256(fs.readFileSync(target))).toBe(sha256(Buffer.concat(chunks)));
    });

    test("a real fetch response body from a local server", async () => {
      const body = pattern(4 * MIB + 123, 9);
      const server = Bun.serve({
        hostname: "127.0.0.1",
        port: 0,
        fetch() {
          let offset = 0;
          // Served in pieces, so the client receives many chunks rather than one buffer.
          const stream = new ReadableStream<Uint8Array>({
            pull(controller) {
              if (offset >= body.length) return controller.close();
              controller.enqueue(body.subarray(offset, offset + 64 * KIB));
              offset += 64 * KIB;
            },
          });
          return new Response(stream);
        },
      });
      try {
        const { target } = existingTarget(0o644);
        const response = await fetch(`http://127.0.0.1:${server.port}/data`);
        expect(response.ok).toBe(true);
        await atomicWriteStream(target, response.body as ReadableStream<Uint8Array>);
        expect(sha256(fs.readFileSync(target))).toBe(sha256(body));
        expect(fs.statSync(target).mode & 0o7777).toBe(0o644);
      } finally {
        server.stop(true);
      }
    });

    test("an empty source: the target becomes an empty file", async () => {
      const { target } = existingTarget();
      await atomicWriteStream(target, []);
      expect(fs.readFileSync(target).length).toBe(0);
    });
  });

  describe("fails cleanly", () => {
    test("rejects with the very error object the source threw half-way, keeping the target intact", async () => {
      const { dir, target } = existingTarget();
      const before = snapshot(dir);
      // A code and a path like a network error's: the library must not rewrite them as its own.
      const thrown = Object.assign(new Error("upstream went away"), { code: "ECONNRESET", path: "https://x/y" });
      let tempsMidWrite = -1;
      async function* source() {
        yield pattern(300 * KIB, 1); // large enough that the temp really holds data when the source fails
        yield "more";
        tempsMidWrite = tempResidue(dir).length;
        throw thrown;
      }
      const error = await rejectionOf(atomicWriteStream(target, source()));
      expect(error).toBe(thrown);
      // Named temps are visible while they fill: proof that this run exercises their removal.
      if (env === "0") expect(tempsMidWrite).toBe(1);
      expect(thrown.message).toBe("upstream went away");
      expect(thrown.path).toBe("https://x/y");
      expect(snapshot(dir)).toEqual(before);
    });

    test("rejects with the very value a sync source threw, even one that is not an Error", async () => {
      const { dir, target } = existingTarget();
      const before = snapshot(dir);
      const thrown = { reason: "not an Error at all" };
      function* source() {
        yield "first";
        throw thrown;
      }
      expect(await rejectionOf(atomicWriteStream(target, source()))).toBe(thrown);
      expect(snapshot(dir)).toEqual(before);
    });

    test("rejects with the very error a ReadableStream errored with", async () => {
      const { dir, target } = existingTarget();
      const before = snapshot(dir);
      const thrown = new Error("stream errored");
      let pulls = 0;
      const stream = new ReadableStream<Uint8Array>({
        pull(controller) {
          if (pulls++ < 3) controller.enqueue(pattern(100 * KIB, pulls));
          else controller.error(thrown);
        },
      });
      expect(await rejectionOf(atomicWriteStream(target, stream))).toBe(thrown);
      expect(snapshot(dir)).toEqual(before);
    });

    test("rejects when a fetch body is cut off by the server, with the fetch error untouched", async () => {
      // A raw socket that promises 1 MB and hangs up after 300 KB: a truncated download.
      const server = Bun.listen({
        hostname: "127.0.0.1",
        port: 0,
        socket: {
          data(socket) {
            socket.write(`HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n${"x".repeat(300_000)}`);
            socket.end();
          },
        },
      });
      try {
        const { dir, target } = existingTarget();
        const before = snapshot(dir);
        const url = `http://127.0.0.1:${server.port}/`;
        const response = await fetch(url);
        const error = (await rejectionOf(
          atomicWriteStream(target, response.body as ReadableStream<Uint8Array>),
        )) as NodeJS.ErrnoException;
        expect(error.code).toBe("ECONNRESET");
        expect(error.path).toBe(url); // the network's error, not re-labelled as a file error
        expect(snapshot(dir)).toEqual(before);
      } finally {
        server.stop(true);
      }
    });

    for (const [what, chunk] of [
      ["a number", 42],
      ["a plain object", { bytes: [1, 2, 3] }],
      ["null", null],
      ["an ArrayBuffer (only Uint8Array and string chunks are accepted)", new ArrayBuffer(4)],
      ["an Int16Array (a view, but not of bytes)", Int16Array.of(1, -2)],
      ["a DataView", new DataView(new ArrayBuffer(4))],
    ] as const) {
      test(`rejects with a TypeError for a chunk that is ${what}, and releases the source`, async () => {
        const { dir, target } = existingTarget();
        const before = snapshot(dir);
        let released = false;
        async function* source() {
          try {
            yield pattern(100 * KIB, 1);
            yield chunk as unknown as Uint8Array; // a wrongly typed source, as plain JS code could pass
            yield "never reached";
          } finally {
            released = true;
          }
        }
        const error = await rejectionOf(atomicWriteStream(target, source()));
        expect(error).toBeInstanceOf(TypeError);
        expect((error as Error).message).toContain("chunk");
        expect(released).toBe(true);
        expect(snapshot(dir)).toEqual(before);
      });
    }

    test("rejects with a TypeError naming the result when a hand-written iterator returns a non-object", async () => {
      const { dir, target } = existingTarget();
      const before = snapshot(dir);
      const source = { [Symbol.iterator]: () => ({ next: () => 42 }) } as unknown as Iterable<Uint8Array>;
      const error = await rejectionOf(atomicWriteStream(target, source));
      expect(error).toBeInstanceOf(TypeError);
      expect((error as Error).message).toContain("iterator results must be objects, got number");
      expect(snapshot(dir)).toEqual(before);
    });

    test("rejects a source that is not iterable with a TypeError, never throwing synchronously", async () => {
      const { dir, target } = existingTarget();
      const before = snapshot(dir);
      for (const source of [42, null, undefined, {}, "a string is not a stream of chunks"]) {
        let promise: Promise<void> | undefined;
        let thrownSynchronously: unknown;
        try {
          // biome-ignore lint/suspicious/noExplicitAny: deliberately the wrong type, as untyped callers pass it
          promise = atomicWriteStream(target, source as any);
        } catch (error) {
          thrownSynchronously = error;
        }
        expect(thrownSynchronously).toBeUndefined();
        const error = await rejectionOf(promise as Promise<void>);
        expect(error).toBeInstanceOf(TypeError);
        expect((error as Error).message).toContain("source");
      }
      expect(snapshot(dir)).toEqual(before);
    });

    test("calls the source's return() when the write fails before the first chunk (missing directory)", async () => {
      const dir = tempDir("stream-");
      let returned = 0;
      let pulled = 0;
      // A hand-written iterator: return() is observable even though iteration never started.
      const source: AsyncIterable<Uint8Array> = {
        [Symbol.asyncIterator]: () => ({
          next: async () => {
            pulled++;
            return { done: false, value: pattern(10) };
          },
          return: async () => {
            returned++;
            return { done: true, value: undefined };
          },
        }),
      };
      const error = (await rejectionOf(
        atomicWriteStream(join(dir, "missing", "file"), source),
      )) as NodeJS.ErrnoException;
      expect(error.code).toBe("ENOENT");
      expect(error.message).toContain(join(dir, "missing", "file"));
      expect(returned).toBe(1);
      expect(pulled).toBe(0);
      expect(fs.readdirSync(dir)).toEqual([]);
    });

    test("rejects with the source's own error, or the write's, even when the source's return() throws too", async () => {
      const dir = tempDir("stream-");
      const target = join(dir, "target.bin");
      fs.writeFileSync(target, "previous contents\n");
      const before = snapshot(dir);
      const sourceError = new Error("the source failed");
      let returned = 0;
      /** A hand-written source whose return() fails, after `chunks` chunks and then `failure`. */
      const source = (chunks: number, failure?: Error): AsyncIterable<Uint8Array> => ({
        [Symbol.asyncIterator]: () => {
          let pulled = 0;
          return {
            next: async () => {
              if (pulled++ < chunks) return { done: false, value: pattern(100 * KIB, pulled) };
              if (failure) throw failure;
              return { done: true, value: undefined };
            },
            return: async () => {
              returned++;
              throw new Error("return() failed as well");
            },
          };
        },
      });
      expect(await rejectionOf(atomicWriteStream(target, source(2, sourceError)))).toBe(sourceError);
      const missing = join(dir, "missing", "file");
      const error = (await rejectionOf(atomicWriteStream(missing, source(2)))) as NodeJS.ErrnoException;
      expect([error.code, error.message]).toEqual(["ENOENT", expect.stringContaining(missing)]);
      expect(returned).toBe(2); // it was asked to release, and its failure to do so is not the news
      expect(snapshot(dir)).toEqual(before);
    });

    test("rejects, and lets later writes to the file go on, even when the source's return() never settles", async () => {
      const dir = tempDir("stream-");
      const target = join(dir, "target.bin");
      fs.writeFileSync(target, "previous contents\n");
      const sourceError = new Error("the source failed");
      let returned = 0;
      const source: AsyncIterable<Uint8Array> = {
        [Symbol.asyncIterator]: () => {
          let pulled = 0;
          return {
            next: async () => {
              if (pulled++ < 2) return { done: false, value: pattern(100 * KIB, pulled) };
              throw sourceError;
            },
            return: () => {
              returned++;
              return new Promise<IteratorResult<Uint8Array>>(() => {}); // a release that hangs
            },
          };
        },
      };
      const failed = atomicWriteStream(target, source);
      const next = atomicWriteTextAsync(target, "next contents\n"); // queued behind the failed write
      const outcome = await Promise.race([
        rejectionOf(failed),
        new Promise((resolve) => setTimeout(() => resolve("still pending after 5 s"), 5000)),
      ]);
      expect(outcome).toBe(sourceError);
      expect(returned).toBe(1);
      await next; // (the failed write's own clean-up is checked by the tests above)
      expect(fs.readFileSync(target, "utf8")).toBe("next contents\n");
      expect(fs.readdirSync(dir)).toEqual(["target.bin"]);
    });

    test.skipIf(!isRoot)(
      `calls the source's return() when the disk fills up, keeping the target intact (${ROOT_ONLY})`,
      async () => {
        const mount = mountTmpfs(512);
        const target = join(mount, "target.bin");
        fs.writeFileSync(target, "previous contents\n");
        fs.chmodSync(target, 0o640);
        const before = snapshot(mount);
        let pulled = 0;
        let released = false;
        async function* source() {
          try {
            for (; pulled < 256; pulled++) yield pattern(64 * KIB, pulled); // 16 MiB into 512 KiB
          } finally {
            released = true; // where a real source would close its socket or file
          }
        }
        const error = (await rejectionOf(atomicWriteStream(target, source()))) as NodeJS.ErrnoException;
        expect(error.code).toBe("ENOSPC");
        expect(error.message).toContain(target);
        expect(released).toBe(true);
        expect(pulled).toBeLessThan(20); // it stopped reading at the failure, not at the source's end
        expect(snapshot(mount)).toEqual(before);
      },
    );

    test.skipIf(!isRoot)(`cancels a ReadableStream source when the disk fills up (${ROOT_ONLY})`, async () => {
      const mount = mountTmpfs(512);
      const target = join(mount, "target.bin");
      fs.writeFileSync(target, "previous contents\n");
      const before = snapshot(mount);
      let cancelled = false;
      let pulls = 0;
      const stream = new ReadableStream<Uint8Array>({
        pull(controller) {
          if (pulls++ < 256) controller.enqueue(pattern(64 * KIB, pulls));
          else controller.close();
        },
        cancel() {
          cancelled = true;
        },
      });
      const error = (await rejectionOf(atomicWriteStream(target, stream))) as NodeJS.ErrnoException;
      expect(error.code).toBe("ENOSPC");
      expect(cancelled).toBe(true);
      expect(pulls).toBeLessThan(20);
      expect(snapshot(mount)).toEqual(before);
    });
  });
});

describe.skipIf(!has("strace"))("atomicWriteStream with many small chunks (strace, in a child)", () => {
  test("gathers them: 10,000 chunks of 100 B take at most 20 writes, not one each", () => {
    const dir = tempDir("stream-small-");
    const target = join(dir, "lines.txt");
    const script = `
      const { atomicWriteStream } = await import(${JSON.stringify(join(ROOT, "index.ts"))});
      async function* lines() {
        for (let i = 0; i < 10000; i++) yield \`\${String(i).padStart(8, "0")} \${"x".repeat(90)}\\n\`;
      }
      await atomicWriteStream(${JSON.stringify(target)}, lines());
    `;
    const log = join(tempDir("trace-"), "strace.log");
    const traced = ["strace", "-f", "-qq", "-y", "-o", log, "-e", "trace=write,pwrite64"];
    const result = spawnSync(traced[0] as string, [...traced.slice(1), BUN, "-e", script], { encoding: "utf8" });
    expect([result.status, result.stderr]).toEqual([0, ""]);
    const text = fs.readFileSync(target, "utf8");
    expect(text.length).toBe(10000 * 100);
    expect(text.split("\n")[9999]).toBe(`00009999 ${"x".repeat(90)}`);
    // The temp, named or anonymous, is the one file written in that directory.
    const writes = fs
      .readFileSync(log, "utf8")
      .split("\n")
      .filter((line) => line.includes(`<${dir}/`));
    expect(writes.length).toBeGreaterThan(0); // the trace saw them
    expect(writes.length).toBeLessThanOrEqual(20); // 1,000,000 bytes in 64 KiB: 16
  });
});

describe("atomicWriteStream when ATOMIC_WRITE_FFI changes while a write is under way", () => {
  // libc (and with it O_TMPFILE) is used on x86-64 and aarch64 Linux only.
  const libc = process.platform === "linux" && ["x64", "arm64"].includes(process.arch);
  test.skipIf(!libc)(
    "the write still succeeds, and the directory keeps its anonymous temps for later writes",
    async () => {
      const saved = [process.env.ATOMIC_WRITE_FFI, process.env.ATOMIC_WRITE_TMPFILE] as const;
      try {
        delete process.env.ATOMIC_WRITE_TMPFILE;
        const dir = tempDir("stream-ffi-");
        const target = join(dir, "target.bin");
        fs.writeFileSync(target, "previous contents\n");
        // The write starts on the node:fs layer; the source switches to libc while ifChanged compares,
        // so the plan asks the node:fs layer for an anonymous temp, which it does not have.
        process.env.ATOMIC_WRITE_FFI = "0";
        async function* switching() {
          delete process.env.ATOMIC_WRITE_FFI;
          yield "new contents\n";
        }
        await atomicWriteStream(target, switching(), { ifChanged: true });
        expect(fs.readFileSync(target, "utf8")).toBe("new contents\n");
        expect(tempResidue(dir)).toEqual([]);
        // The next write in that directory, on libc throughout, still gets an invisible temp: the
        // node:fs layer's "none here" did not mark the directory as one refusing O_TMPFILE.
        let midWrite: string[] = [];
        async function* looking() {
          yield pattern(100, 1);
          midWrite = fs.readdirSync(dir);
          yield pattern(100, 2);
        }
        await atomicWriteStream(target, looking());
        expect(midWrite).toEqual(["target.bin"]);
        expect(fs.readFileSync(target)).toEqual(Buffer.concat([pattern(100, 1), pattern(100, 2)]));
      } finally {
        for (const [name, value] of [
          ["ATOMIC_WRITE_FFI", saved[0]],
          ["ATOMIC_WRITE_TMPFILE", saved[1]],
        ] as const) {
          if (value === undefined) delete process.env[name];
          else process.env[name] = value;
        }
      }
    },
  );
});

describe("atomicWriteStream keeps memory bounded", () => {
  test("holding no chunk once it is written (each is collectable while the stream goes on)", async () => {
    const dir = tempDir("stream-mem-");
    const alive: WeakRef<Uint8Array>[] = [];
    const stillHeld: number[] = [];
    async function* source() {
      for (let index = 0; index < 48; index++) {
        if (index % 8 === 7) {
          Bun.gc(true);
          // Chunks handed over more than 3 pulls ago: the library must have let go of them.
          stillHeld.push(alive.slice(0, index - 3).filter((ref) => ref.deref() !== undefined).length);
        }
        const chunk = new Uint8Array(MIB).fill(index);
        alive.push(new WeakRef(chunk));
        yield chunk;
      }
    }
    await atomicWriteStream(join(dir, "out"), source(), { durable: false });
    expect(fs.statSync(join(dir, "out")).size).toBe(48 * MIB);
    // The collector scans the stack conservatively, so a stray chunk may survive; a leak keeps all.
    expect(Math.max(...stillHeld)).toBeLessThanOrEqual(2);
  });

  /** The peak RSS in KiB of the memory fixture writing 1 GiB in a fresh process (VmHWM and GNU time's). */
  function peakKiB(kind: string): number {
    const dir = tempDir("stream-rss-");
    const out = join(dir, "one-gib.bin");
    const child = join(ROOT, "test", "fixtures", "stream-memory.ts");
    // GNU time measures the child alone; maxRSS from a Bun parent can report the parent's peak.
    const timed = has("/usr/bin/time");
    const command = [BUN, child, out, "1024", kind];
    const argv = timed ? ["/usr/bin/time", "-f", "maxrss=%M", ...command] : command;
    const result = spawnSync(argv[0] as string, argv.slice(1), { encoding: "utf8" });
    fs.rmSync(out, { force: true });
    expect(result.status).toBe(0);
    const report = JSON.parse(result.stdout.trim().split("\n").pop() as string) as {
      peakKiB: number;
      samplesRight: boolean;
    };
    expect(report.samplesRight).toBe(true);
    expect(report.peakKiB).toBeGreaterThan(0);
    if (!timed) return report.peakKiB;
    const maxrss = Number(/maxrss=(\d+)/.exec(result.stderr)?.[1]);
    expect(maxrss).toBeGreaterThan(0);
    return Math.max(maxrss, report.peakKiB);
  }

  test.each([
    ["one reused 1 MiB Uint8Array", "bytes"],
    ["two 1 MiB strings in turn", "strings"],
    // The runtime frees discarded chunks late: before the library asked for collections, a new
    // string per chunk peaked at 68-95 MiB here (a bare writeSync loop at 52-65).
    ["a new 1 MiB Uint8Array per chunk", "fresh bytes"],
    ["a new 1 MiB string per chunk", "fresh strings"],
  ])("1 GiB from a generator of %s peaks under 64 MiB RSS in a fresh Bun process", (_label, kind) => {
    expect(peakKiB(kind)).toBeLessThan(64 * 1024);
  });

  test("1 GiB of 128 KiB strings takes no more memory than 1 GiB of 128 KiB Uint8Arrays (one reused encoding buffer)", () => {
    // An encoded copy per string chunk is garbage the collector frees late: it took 60-70 MiB here,
    // 13-18 MiB more than bytes. The lower of two runs each, as a busy machine raises single peaks.
    const strings = Math.min(peakKiB("medium strings"), peakKiB("medium strings"));
    const bytes = Math.min(peakKiB("medium bytes"), peakKiB("medium bytes"));
    expect(strings).toBeLessThan(64 * 1024);
    expect(strings - bytes).toBeLessThan(10 * 1024);
  });
});

/**
 * The main contract suite (SPEC.md: "Library API", "Errors", and steps 1–4 of "The write protocol"):
 * contents, modes, ownership, argument errors, every error code produced for real, and symlinks,
 * each checked for all four write functions, sync and async alike. Concurrency, the CLI, durability
 * and `ifChanged` have suites of their own.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import { basename, join } from "node:path";
import { pathToFileURL } from "node:url";
import type { BytesLike } from "./index.ts";
import * as lib from "./index.ts";
import {
  type ChildWrite,
  cleanup,
  type Failure,
  failureOf,
  fillDisk,
  has,
  injecting,
  isRoot,
  modeOf,
  mountTmpfs,
  NOBODY,
  plant,
  remount,
  run,
  snapshot,
  TIMEOUT_MS,
  tempDir,
  tempResidue,
  writeInChild,
} from "./test/helpers.ts";

setDefaultTimeout(TIMEOUT_MS);

// Relative symlinks resolved from the working directory instead of the link's own directory would
// write here: an empty scratch directory, checked by the tests, rather than the repository.
const home = process.cwd();
const scratchCwd = tempDir("cwd-");
beforeAll(() => process.chdir(scratchCwd));
afterAll(() => process.chdir(home));
afterAll(cleanup);

// ---------------------------------------------------------------------------------------------
// The four functions, driven through one table so every contract holds for each of them.

/** The argument-error tests must pass what the signatures refuse, so calls go through this loose type. */
type Loose = (path: unknown, data: unknown, options?: unknown) => unknown;

interface Variant {
  name: ChildWrite["fn"];
  kind: "text" | "bytes";
  isAsync: boolean;
  fn: Loose;
}

const VARIANTS: Variant[] = [
  { name: "atomicWriteText", kind: "text", isAsync: false, fn: lib.atomicWriteText as Loose },
  { name: "atomicWriteTextAsync", kind: "text", isAsync: true, fn: lib.atomicWriteTextAsync as Loose },
  { name: "atomicWriteBytes", kind: "bytes", isAsync: false, fn: lib.atomicWriteBytes as Loose },
  { name: "atomicWriteBytesAsync", kind: "bytes", isAsync: true, fn: lib.atomicWriteBytesAsync as Loose },
];
const rows = (variants: Variant[]) => variants.map((v) => [v.name, v] as const);
const TEXT = VARIANTS.filter((v) => v.kind === "text");
const BYTES = VARIANTS.filter((v) => v.kind === "bytes");

/** What each function takes for `text`: the string itself, or its UTF-8 bytes. */
function payload(v: Variant, text: string): string | Buffer {
  return v.kind === "text" ? text : Buffer.from(text, "utf8");
}

/** The same, as `test/fixtures/write-child.ts` expects it (base64 for the bytes functions). */
function childPayload(v: Variant, text: string): string {
  return v.kind === "text" ? text : Buffer.from(text, "utf8").toString("base64");
}

/** A successful call: a sync function returns nothing, an async one a promise that resolves. */
async function put(v: Variant, path: unknown, data: unknown, options?: unknown): Promise<void> {
  const returned = v.fn(path, data, options);
  if (v.isAsync) {
    expect(returned).toBeInstanceOf(Promise);
    await returned;
  } else {
    expect(returned).toBeUndefined();
  }
  if (typeof path === "string") expect(tempResidue(join(path, ".."))).toEqual([]);
}

/** A call that must fail: a sync function throws, an async one rejects (and never throws). */
function failure(v: Variant, path: unknown, data: unknown, options?: unknown): Promise<Failure> {
  return failureOf(v.name, v.isAsync, () => v.fn(path, data, options));
}

interface Expectation {
  /** The path exactly as the caller gave it: the message must name it. */
  path: string;
  codes: string[];
  /** Directories whose every entry must be as it was (no temp left, nothing replaced). */
  watch: string[];
  /** An existing file that must keep its bytes and mode. */
  target?: string;
}

/** The full failure-path check: right code, the caller's path named, nothing on disk changed. */
async function expectFailsCleanly(attempt: () => Promise<Failure> | Failure, want: Expectation): Promise<void> {
  const before = want.watch.map((dir) => snapshot(dir));
  const old =
    want.target === undefined ? undefined : { bytes: fs.readFileSync(want.target), mode: modeOf(want.target) };
  const error = await attempt();
  expect(want.codes).toContain(error.code as string);
  expect(error.message).toContain(want.path);
  // "Not written" carries no `published` flag at all (SPEC: Errors).
  expect(error.published).toBeUndefined();
  if (want.target !== undefined && old !== undefined) {
    expectFileBytes(want.target, old.bytes);
    expect(modeOf(want.target)).toBe(old.mode);
  }
  expect(want.watch.map((dir) => snapshot(dir))).toEqual(before);
}

/** Compares contents by length and first differing offset, so a 20 MiB mismatch prints one line. */
function expectFileBytes(path: string, want: Uint8Array): void {
  const got = fs.readFileSync(path);
  let firstDifference = -1;
  if (!got.equals(want)) {
    firstDifference = 0;
    while (got[firstDifference] === want[firstDifference]) firstDifference++;
  }
  expect({ length: got.length, firstDifference }).toEqual({ length: want.byteLength, firstDifference: -1 });
}

async function withUmaskAsync(mask: number, body: () => Promise<void>): Promise<void> {
  const previous = process.umask(mask);
  try {
    await body();
  } finally {
    process.umask(previous);
  }
}

function readUmask(): number {
  const mask = process.umask(0);
  process.umask(mask);
  return mask;
}

const hex = (text: string) => Buffer.from(text, "hex");

// ---------------------------------------------------------------------------------------------

describe("the exports", () => {
  test("the specification's names are the very same function objects", () => {
    expect(lib.atomic_write_text).toBe(lib.atomicWriteText);
    expect(lib.atomic_write_bytes).toBe(lib.atomicWriteBytes);
  });
});

// Expected bytes are written out by hand from the encodings' definitions, not computed by Buffer.
const ENCODED: [encoding: string, text: string, bytes: string][] = [
  ["utf8", "aé😀\r\n", "61c3a9f09f98800d0a"],
  ["utf-8", "aé😀\r\n", "61c3a9f09f98800d0a"],
  ["UTF-8", "日\n", "e697a50a"],
  ["utf8", "a\ud800b\udc00", "61efbfbd62efbfbd"], // lone surrogates become U+FFFD, as Buffer writes them
  ["utf16le", "aé😀", "6100e9003dd800de"],
  ["utf-16le", "aé😀", "6100e9003dd800de"],
  ["ucs2", "aé😀", "6100e9003dd800de"],
  ["ucs-2", "a\r\n", "61000d000a00"],
  ["latin1", "aéÿ\r\n", "61e9ff0d0a"],
  ["binary", "aéÿ\r\n", "61e9ff0d0a"],
  ["ascii", "abc\r\n~", "6162630d0a7e"],
  ["base64", "AP8Q+/8=", "00ff10fbff"],
  ["base64url", "AP8Q-_8", "00ff10fbff"],
  ["hex", "00ff10FB", "00ff10fb"],
];

/** index.ts encodes long strings this many UTF-16 units at a time (TEXT_PIECE). */
const PIECE = 256 * 1024;

/** Astral characters whose surrogate halves sit on either side of each of the first piece boundaries. */
const STRADDLING = `${"x".repeat(PIECE - 1)}😀${"é".repeat(PIECE - 2)}😀${"日".repeat(PIECE - 2)}😀tail`;
/** Odd length before an all-astral run: every even boundary, whatever the piece size, splits a pair. */
const ALL_ASTRAL = `x${"😀".repeat(300_000)}`;
/** UTF-8 slices span the whole 768 KiB buffer (3 * PIECE units) until non-ASCII text overflows it. */
const UTF8_SPAN = 3 * PIECE;
/**
 * A pair on the first UTF-8 slice boundary; a 3-byte run that fills the buffer mid-slice (slices
 * then shrink to 262,144 units, ending at odd offsets); then pairs starting at even offsets, so
 * later slices end between the halves of a pair while the buffer still has room.
 */
const UTF8_STRADDLING = `${"x".repeat(UTF8_SPAN - 1)}😀${"€".repeat(UTF8_SPAN + 1)}${"😀".repeat(UTF8_SPAN / 2)}tail`;

/**
 * Every contract below holds for both kinds of temp file (SPEC: "both paths are tested on every run"):
 * the anonymous O_TMPFILE inode the library prefers on Linux, and the named temp it falls back to;
 * and for both layers that make the system calls: libc through bun:ffi (the default under Bun on
 * Linux) and node:fs (what Node.js and other platforms use; it has no O_TMPFILE, so named temps).
 * The library reads the variables on every call, and child processes inherit them.
 */
const TEMP_KINDS = [
  ["anonymous O_TMPFILE temps (the default on Linux)", {}],
  ["named temps (ATOMIC_WRITE_TMPFILE=0)", { ATOMIC_WRITE_TMPFILE: "0" }],
  ["the node:fs system-call layer (ATOMIC_WRITE_FFI=0)", { ATOMIC_WRITE_FFI: "0" }],
] as const;

const CHOICES = ["ATOMIC_WRITE_TMPFILE", "ATOMIC_WRITE_FFI"] as const;

const namedTemps = () => process.env.ATOMIC_WRITE_TMPFILE === "0" || process.env.ATOMIC_WRITE_FFI === "0";

describe.each(TEMP_KINDS)("with %s", (_kind, settings: Partial<Record<(typeof CHOICES)[number], string>>) => {
  const saved = CHOICES.map((name) => [name, process.env[name]] as const);
  const restore = (values: readonly (readonly [string, string | undefined])[]) => {
    for (const [name, value] of values) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
  };
  beforeAll(() => restore(CHOICES.map((name) => [name, settings[name]] as const)));
  afterAll(() => restore(saved));

  describe.each(rows(TEXT))("%s writes text exactly as encoded", (_name, v) => {
    test.each(ENCODED)("in %s, byte for byte", async (encoding, text, bytes) => {
      const path = join(tempDir(), "out");
      await put(v, path, text, { encoding });
      expectFileBytes(path, hex(bytes));
    });

    test("in UTF-8 when no encoding is given, with no BOM added and none removed", async () => {
      const dir = tempDir();
      await put(v, join(dir, "plain"), "é😀\r\n");
      expectFileBytes(join(dir, "plain"), hex("c3a9f09f98800d0a"));
      await put(v, join(dir, "bom"), "\ufeffhi", { encoding: "utf8" });
      expectFileBytes(join(dir, "bom"), hex("efbbbf6869"));
    });

    test.each([["utf8"], ["utf16le"], ["latin1"]])(
      "in %s, for strings longer than one internal piece with astral characters on the piece boundaries",
      async (encoding) => {
        const enc = encoding as BufferEncoding;
        // The fixture itself must straddle, or this test proves nothing.
        expect(STRADDLING.charCodeAt(PIECE - 1)).toBe(0xd83d);
        expect(STRADDLING.charCodeAt(PIECE)).toBe(0xde00);
        const dir = tempDir();
        await put(v, join(dir, "straddling"), STRADDLING, { encoding: enc });
        expectFileBytes(join(dir, "straddling"), Buffer.from(STRADDLING, enc));
        await put(v, join(dir, "astral"), ALL_ASTRAL, { encoding: enc });
        expectFileBytes(join(dir, "astral"), Buffer.from(ALL_ASTRAL, enc));
        if (enc === "utf8") {
          // A split pair would show up as U+FFFD (ef bf bd) and change the length.
          const written = fs.readFileSync(join(dir, "astral"));
          expect(written.length).toBe(1 + 4 * 300_000);
          expect(written.indexOf(hex("efbfbd"))).toBe(-1);
          expect(UTF8_STRADDLING.charCodeAt(UTF8_SPAN - 1)).toBe(0xd83d);
          await put(v, join(dir, "utf8-straddling"), UTF8_STRADDLING, { encoding: "utf-8" });
          const long = fs.readFileSync(join(dir, "utf8-straddling"));
          expect(long.equals(Buffer.from(UTF8_STRADDLING, "utf8"))).toBe(true);
          expect(long.indexOf(hex("efbfbd"))).toBe(-1);
        }
      },
    );
  });

  describe.each(rows(BYTES))("%s writes exactly the bytes of any bytes-like input", (_name, v) => {
    const backing = new Uint8Array(64).map((_, i) => i * 3);
    // Multi-byte views: the expected bytes are little-endian, as on every platform Bun runs on.
    const inputs: [label: string, data: BytesLike, bytes: string][] = [
      ["a Uint8Array", Uint8Array.of(0, 1, 127, 128, 255), "00017f80ff"],
      ["a Buffer", Buffer.from("héllo", "utf8"), "68c3a96c6c6f"],
      ["a subarray view (only its own bytes)", backing.subarray(10, 14), "1e212427"],
      ["an ArrayBuffer", Uint8Array.of(9, 8, 7).buffer, "090807"],
      ["a DataView over part of a buffer", new DataView(backing.buffer, 2, 3), "06090c"],
      ["an Int16Array", Int16Array.of(1, -2, 0x7fff), "0100feffff7f"],
      ["an Int16Array view at an offset", new Int16Array(backing.buffer, 4, 2), "0c0f1215"],
      ["a Float64Array", Float64Array.of(1), "000000000000f03f"],
    ];
    test.each(inputs)("given %s", async (_label, data, bytes) => {
      const path = join(tempDir(), "out");
      await put(v, path, data);
      expectFileBytes(path, hex(bytes));
    });
  });

  describe.each(rows(VARIANTS))("%s replaces contents whole", (_name, v) => {
    test("writes empty data as an empty file, new or over an existing one", async () => {
      const dir = tempDir();
      const empty = v.kind === "text" ? "" : new Uint8Array(0);
      await put(v, join(dir, "new"), empty);
      expect(fs.statSync(join(dir, "new")).size).toBe(0);
      plant(join(dir, "old"), "old contents");
      await put(v, join(dir, "old"), empty);
      expect(fs.statSync(join(dir, "old")).size).toBe(0);
    });

    test("writes 20 MiB intact", async () => {
      const path = join(tempDir(), "large");
      plant(path, "previous");
      if (v.kind === "text") {
        const text = "é".repeat(10 * 1024 * 1024);
        await put(v, path, text);
        expectFileBytes(path, Buffer.from(text, "utf8"));
      } else {
        const bytes = randomBytes(20 * 1024 * 1024);
        await put(v, path, bytes);
        expectFileBytes(path, bytes);
      }
    });

    test("leaves no tail of a longer file it replaces with a short one", async () => {
      const path = join(tempDir(), "shrinks");
      plant(path, "Z".repeat(1024 * 1024));
      await put(v, path, payload(v, "short\n"));
      expectFileBytes(path, Buffer.from("short\n"));
    });

    test("accepts the path as a string, a Buffer or a file: URL", async () => {
      const dir = tempDir();
      await put(v, join(dir, "as string"), payload(v, "one"));
      await put(v, Buffer.from(join(dir, "as-buffer-é")), payload(v, "two"));
      await put(v, pathToFileURL(join(dir, "as url #1 ü")), payload(v, "three"));
      expectFileBytes(join(dir, "as string"), Buffer.from("one"));
      expectFileBytes(join(dir, "as-buffer-é"), Buffer.from("two"));
      expectFileBytes(join(dir, "as url #1 ü"), Buffer.from("three"));
      expect(fs.readdirSync(dir).sort()).toEqual(["as string", "as url #1 ü", "as-buffer-é"]);
    });

    test("accepts a path relative to the working directory, a bare name or doubled slashes included", async () => {
      const dir = tempDir();
      fs.mkdirSync(join(dir, "sub"));
      const cwd = process.cwd();
      process.chdir(dir);
      try {
        await put(v, "bare", payload(v, "one"));
        await put(v, "sub//double", payload(v, "two"));
        await put(v, "./sub/dotted", payload(v, "three"));
      } finally {
        process.chdir(cwd);
      }
      expectFileBytes(join(dir, "bare"), Buffer.from("one"));
      expectFileBytes(join(dir, "sub", "double"), Buffer.from("two"));
      expectFileBytes(join(dir, "sub", "dotted"), Buffer.from("three"));
      expect(fs.readdirSync(dir).sort()).toEqual(["bare", "sub"]);
      expect(fs.readdirSync(join(dir, "sub")).sort()).toEqual(["dotted", "double"]);
    });

    test("never modifies the caller's options object", async () => {
      const dir = tempDir();
      plant(join(dir, "existing"), "old", 0o640);
      const extra = v.kind === "text" ? { encoding: "utf8" } : {};
      // Frozen: an assignment inside the library throws. Compared: nothing added or changed.
      const options = Object.freeze({ mode: 0o600, durable: true, ifChanged: false, ...extra });
      const copy = structuredClone(options);
      await put(v, join(dir, "new"), payload(v, "x"), options);
      expect(options).toStrictEqual(copy);
      const bare = {};
      await put(v, join(dir, "existing"), payload(v, "y"), bare);
      expect(bare).toStrictEqual({});
      await put(v, join(dir, "existing"), payload(v, "z"), Object.freeze({}));
      expect(modeOf(join(dir, "existing"))).toBe(0o640);
    });
  });

  // ---------------------------------------------------------------------------------------------

  describe.each(rows(VARIANTS))("%s gives the file the right mode and owner", (_name, v) => {
    test("sets an explicit mode exactly, not filtered by the umask", async () => {
      const dir = tempDir();
      plant(join(dir, "existing"), "old", 0o4755);
      await withUmaskAsync(0o077, async () => {
        for (const mode of [0o666, 0o640, 0o4711, 0o2775, 0o1777, 0o000]) {
          const path = join(dir, `new-${mode.toString(8)}`);
          await put(v, path, payload(v, "data"), { mode });
          expect([path, modeOf(path)]).toEqual([path, mode]);
        }
        await put(v, join(dir, "existing"), payload(v, "data"), { mode: 0o644 });
        expect(modeOf(join(dir, "existing"))).toBe(0o644);
      });
    });

    test("keeps an existing target's mode, setuid, setgid and sticky bits included", async () => {
      const dir = tempDir();
      for (const mode of [0o4755, 0o2750, 0o1644, 0o6711, 0o600, 0o444, 0o000]) {
        const path = join(dir, `t-${mode.toString(8)}`);
        plant(path, "old", mode);
        await withUmaskAsync(0o077, () => put(v, path, payload(v, "new")));
        expect([path, modeOf(path)]).toEqual([path, mode]);
        expectFileBytes(path, Buffer.from("new"));
      }
    });

    test("gives a new file 0o666 minus the umask, as a plain create would", async () => {
      const dir = tempDir();
      for (const mask of [0o022, 0o027, 0o002, 0o077]) {
        const path = join(dir, `u-${mask.toString(8)}`);
        await withUmaskAsync(mask, () => put(v, path, payload(v, "new")));
        expect([path, modeOf(path)]).toEqual([path, 0o666 & ~mask]);
      }
    });

    test("takes a mode of null as unset, as the specification's mode=None: kept, or from the umask", async () => {
      const dir = tempDir();
      const [kept, created] = [join(dir, "kept"), join(dir, "created")];
      plant(kept, "old", 0o2750);
      await withUmaskAsync(0o027, async () => {
        await put(v, kept, payload(v, "new"), { mode: null });
        await put(v, created, payload(v, "new"), { mode: null });
      });
      expect([modeOf(kept), modeOf(created)]).toEqual([0o2750, 0o640]);
      expectFileBytes(kept, Buffer.from("new"));
    });
    test.skipIf(!has("setfacl") || !has("getfacl"))(
      "gives a new file what a plain create would in a directory with default ACLs (which override the umask)",
      async () => {
        // A default ACL replaces the umask for files created in that directory (acl(5)); its named
        // entries are inherited too. A library that computes 0o666 & ~umask and chmods to it gets both wrong.
        const defaults = ["u::rw,g::r,o::-", "u::rwx,g::rwx,o::rwx", "u::rw,g::r,o::-,u:1234:rw,m::rw"];
        for (const acl of defaults) {
          const dir = tempDir("acl-");
          run("setfacl", ["-d", "-m", acl, dir]);
          for (const mask of [0o022, 0o077]) {
            const path = join(dir, `new-${mask.toString(8)}`);
            const plain = join(dir, `plain-${mask.toString(8)}`);
            await withUmaskAsync(mask, async () => {
              fs.closeSync(fs.openSync(plain, "wx", 0o666));
              await put(v, path, payload(v, "new"));
            });
            const entries = (file: string) => run("getfacl", ["-cp", file]).trim().split("\n");
            const want = { mode: modeOf(plain), acl: entries(plain) };
            expect({ acl, mask, mode: modeOf(path), entries: entries(path) }).toEqual({
              acl,
              mask,
              mode: want.mode,
              entries: want.acl,
            });
            expectFileBytes(path, Buffer.from("new"));
          }
        }
      },
    );

    test.skipIf(!has("strace"))(
      "never puts data in a temp that group or others may read when the final file is private (traced openat)",
      () => {
        const scenarios: { label: string; existing?: number; mode?: number; final: number }[] = [
          { label: "existing 0o600 target", existing: 0o600, final: 0o600 },
          { label: "existing 0o644 target made 0o600", existing: 0o644, mode: 0o600, final: 0o600 },
          { label: "new file with mode 0o600", mode: 0o600, final: 0o600 },
          { label: "new file with mode 0o640", mode: 0o640, final: 0o640 },
        ];
        for (const scenario of scenarios) {
          const dir = tempDir();
          const target = join(dir, "secret");
          if (scenario.existing !== undefined) plant(target, "old", scenario.existing);
          const log = join(tempDir("trace-"), "strace.log");
          // umask 0 in the child: the kernel must not be what hides a too-wide temp mode.
          const wrap = ["strace", "-f", "-qq", "-s", "4096", "-e", "trace=openat,umask", "-o", log];
          const shell = ["sh", "-c", 'umask 000 && exec "$@"', "sh"];
          const result = writeInChild(
            {
              fn: v.name,
              path: target,
              data: childPayload(v, "secret data"),
              options: scenario.mode === undefined ? {} : { mode: scenario.mode },
            },
            { wrap: [...wrap, ...shell] },
          );
          expect([scenario.label, result.ok, result.message]).toEqual([scenario.label, true, undefined]);
          expect([scenario.label, modeOf(target)]).toEqual([scenario.label, scenario.final]);
          const trace = fs.readFileSync(log, "utf8");
          expect(trace).toMatch(/umask\(0+\)/);
          // Every file created in the target's directory (a named temp, or an O_TMPFILE on the directory).
          const created = [...trace.matchAll(/openat\(AT_FDCWD, "([^"]+)", ([A-Z0-9_|]+), (0[0-7]*)/g)]
            .filter((m) => m[1] === dir || (m[1] as string).startsWith(`${dir}/`))
            .map((m) => ({ path: m[1], flags: m[2], mode: Number.parseInt(m[3] as string, 8) }));
          expect([scenario.label, created.length > 0]).toEqual([scenario.label, true]);
          // The kind of temp under test is really the one in use (else both runs test the same path).
          const anonymous = created.filter((c) => c.flags?.includes("O_TMPFILE"));
          if (namedTemps()) expect([scenario.label, anonymous]).toEqual([scenario.label, []]);
          else expect([scenario.label, anonymous.length]).toEqual([scenario.label, 1]);
          const wider = created.filter((c) => (c.mode & 0o077 & ~scenario.final) !== 0);
          expect([scenario.label, wider]).toEqual([scenario.label, []]);
          // A named temp is created exclusively: never an existing file, nor through a symlink.
          for (const named of created.filter((c) => !c.flags?.includes("O_TMPFILE"))) {
            const exclusive = named.flags?.split("|").filter((f) => /^O_(CREAT|EXCL|NOFOLLOW|TRUNC)$/.test(f));
            expect([scenario.label, exclusive?.sort()]).toEqual([scenario.label, ["O_CREAT", "O_EXCL", "O_NOFOLLOW"]]);
          }
        }
      },
    );

    test.skipIf(!isRoot)(
      "keeps an existing file's owner and group, and then its setuid/setgid bits (as root)",
      async () => {
        const dir = tempDir();
        for (const mode of [0o644, 0o6755, 0o2750]) {
          const path = join(dir, `owned-${mode.toString(8)}`);
          plant(path, "old", mode);
          fs.chownSync(path, 1234, 5678);
          // A chown after the chmod would clear the setuid and setgid bits (Linux does so even for root).
          fs.chmodSync(path, mode);
          await put(v, path, payload(v, "new"));
          const stat = fs.statSync(path);
          expect({ uid: stat.uid, gid: stat.gid, mode: stat.mode & 0o7777 }).toEqual({ uid: 1234, gid: 5678, mode });
          expectFileBytes(path, Buffer.from("new"));
        }
      },
    );

    test.skipIf(!isRoot)(
      "keeps the old group in a setgid directory, even when owner and group are the process's own (as root)",
      async () => {
        const dir = tempDir();
        fs.chownSync(dir, 0, 5678);
        fs.chmodSync(dir, 0o2775); // new files here take group 5678
        const path = join(dir, "roots-own");
        plant(path, "old", 0o640);
        fs.chownSync(path, 0, 0);
        await put(v, path, payload(v, "new"));
        const stat = fs.statSync(path);
        expect({ uid: stat.uid, gid: stat.gid, mode: stat.mode & 0o7777 }).toEqual({ uid: 0, gid: 0, mode: 0o640 });
        expectFileBytes(path, Buffer.from("new"));
      },
    );

    test.skipIf(!isRoot)("keeps a group the unprivileged user belongs to, in a setgid directory too", () => {
      const dir = tempDir();
      fs.chownSync(dir, NOBODY, 5678);
      fs.chmodSync(dir, 0o2775);
      const path = join(dir, "users-own");
      plant(path, "old", 0o644);
      fs.chownSync(path, NOBODY, NOBODY);
      // The user belongs to both groups, so it may give the file its old group back.
      const wrap = ["setpriv", `--reuid=${NOBODY}`, `--regid=${NOBODY}`, `--groups=${NOBODY},5678`, "--"];
      const result = writeInChild({ fn: v.name, path, data: childPayload(v, "new") }, { wrap });
      expect([result.ok, result.message]).toEqual([true, undefined]);
      expectFileBytes(path, Buffer.from("new"));
      const stat = fs.statSync(path);
      expect({ uid: stat.uid, gid: stat.gid, mode: stat.mode & 0o7777 }).toEqual({
        uid: NOBODY,
        gid: NOBODY,
        mode: 0o644,
      });
      expect(tempResidue(dir)).toEqual([]);
    });

    test.skipIf(!isRoot)("still writes when the process may not keep the owner (unprivileged child)", () => {
      const dir = tempDir();
      fs.chownSync(dir, NOBODY, NOBODY);
      const path = join(dir, "roots");
      plant(path, "old", 0o644);
      const result = writeInChild({ fn: v.name, path, data: childPayload(v, "new") }, { user: NOBODY });
      expect([result.ok, result.message]).toEqual([true, undefined]);
      expectFileBytes(path, Buffer.from("new"));
      expect(modeOf(path)).toBe(0o644);
      expect(fs.statSync(path).uid).toBe(NOBODY);
      expect(tempResidue(dir)).toEqual([]);
    });
  });

  // ---------------------------------------------------------------------------------------------

  /** `buffer`, detached: its memory transferred to a clone, as postMessage does. */
  function detached(buffer: ArrayBuffer): ArrayBuffer {
    structuredClone(buffer, { transfer: [buffer] });
    return buffer;
  }

  function viewOfDetached(): Uint8Array {
    const view = new Uint8Array(8);
    detached(view.buffer);
    return view;
  }

  /** A 1000-byte view, and what makes it read short when the write's turn comes. */
  interface Spoiled {
    view: Uint8Array;
    spoil: () => void;
  }
  const SPOILERS: [string, boolean, () => Spoiled][] = [
    // As postMessage(view, [view.buffer]) does, at once or while the write waits behind another.
    ...([false, true] as const).map((queued): [string, boolean, () => Spoiled] => [
      `transferred away ${queued ? "while it waits behind another write to the file" : "at once"}`,
      queued,
      () => {
        const view = new Uint8Array(1000);
        return { view, spoil: () => detached(view.buffer) };
      },
    ]),
    ...([true, false] as const).map((tracking): [string, boolean, () => Spoiled] => [
      `resizable and shrunk, seen through a view ${tracking ? "that tracks its length" : "of a fixed length, then out of bounds"}`,
      false,
      () => {
        const memory = new ArrayBuffer(1000, { maxByteLength: 2000 });
        const view = tracking ? new Uint8Array(memory) : new Uint8Array(memory, 0, 1000);
        return { view, spoil: () => memory.resize(10) };
      },
    ]),
  ];

  describe("an async bytes write whose buffer reads short when its turn comes", () => {
    test.each(SPOILERS)(
      "rejects with a TypeError naming data, and leaves the file as it was: %s",
      async (_what, queued, make) => {
        const dir = tempDir();
        const path = join(dir, "target");
        plant(path, "old contents", 0o640);
        const before = snapshot(dir);
        // ifChanged: the earlier write, finding the same bytes, leaves the file's inode as it was too.
        const earlier = queued
          ? lib.atomicWriteTextAsync(path, "old contents", { ifChanged: true })
          : Promise.resolve();
        const { view, spoil } = make();
        view.fill(0x41);
        const pending = lib.atomicWriteBytesAsync(path, view);
        const batch = lib.atomicWriteManyAsync([{ path: join(dir, "other"), data: view }]);
        spoil();
        await earlier;
        for (const write of [pending, batch]) {
          const error = (await write.catch((e) => e)) as Error;
          expect(error).toBeInstanceOf(TypeError);
          expect(error.message).toContain("data");
        }
        expect(snapshot(dir)).toEqual(before);
      },
    );
  });

  describe.each(rows(VARIANTS))("%s rejects bad arguments before touching the disk", (_name, v) => {
    const good = v.kind === "text" ? "new" : Buffer.from("new");
    const badData: [string, unknown][] =
      v.kind === "text"
        ? [
            ["a number", 42],
            ["null", null],
            ["undefined", undefined],
            ["an object", { toString: () => "text" }],
            ["bytes", Buffer.from("text")],
          ]
        : [
            ["a number", 42],
            ["null", null],
            ["a string", "text"],
            ["a plain object", { length: 1, 0: 1 }],
            ["an array of numbers", [1, 2]],
            // Read as empty: writing one would replace the file with nothing.
            ["a detached ArrayBuffer", detached(new ArrayBuffer(8))],
            ["a view of a detached ArrayBuffer", viewOfDetached()],
          ];
    const badModes: [string, unknown][] = [
      ["a fraction", 1.5],
      ["negative", -1],
      ["above 0o7777", 0o10000],
      ["a string", "644"],
      ["NaN", Number.NaN],
      ["Infinity", Number.POSITIVE_INFINITY],
    ];

    /** One bad call against a directory holding an existing target: an argument error, and no change. */
    async function expectArgumentError(argument: string, path: unknown, data: unknown, options?: unknown) {
      const dir = tempDir();
      plant(join(dir, "target"), "old", 0o640);
      const before = snapshot(dir);
      const error = await failure(v, path ?? join(dir, "target"), data, options);
      expect([error.name, error.message]).toEqual([
        expect.stringMatching(/^(TypeError|RangeError)$/),
        expect.any(String),
      ]);
      expect(error.message).toContain(argument);
      expect(error.code === undefined || error.code.startsWith("ERR_")).toBe(true);
      expect(snapshot(dir)).toEqual(before);
    }

    test.each(badData)("data that is %s: a TypeError naming data", (_label, data) =>
      expectArgumentError("data", undefined, data),
    );

    test.each(badModes)("a mode that is %s: an error naming mode", (_label, mode) =>
      expectArgumentError("mode", undefined, good, { mode }),
    );

    if (v.kind === "text") {
      test.each([["utf-9"], [""], ["latin-1"]])("an unknown encoding %p: an error naming encoding", (encoding) =>
        expectArgumentError("encoding", undefined, good, { encoding }),
      );
    }

    test("an options argument that is not an object: an error naming options", () =>
      expectArgumentError("options", undefined, good, 0o644));

    const dirForPaths = tempDir();
    const badPaths: [string, unknown][] = [
      ["empty", ""],
      ["an empty Buffer", Buffer.alloc(0)],
      ["a string with a NUL byte", join(dirForPaths, "a\0b")],
      ["a Buffer with a NUL byte", Buffer.from(join(dirForPaths, "a\0b"))],
      // As UTF-8 it would become "a\u{FFFD}": a different file from the one these bytes name.
      ["a Buffer that is not UTF-8", Buffer.concat([Buffer.from(join(dirForPaths, "a")), Buffer.from([0xff])])],
      ["a file: URL with an encoded NUL", new URL(`${pathToFileURL(dirForPaths).href}/a%00b`)],
      ["a non-file URL", new URL("https://example.com/file.txt")],
      ["a file: URL with a bad escape", new URL(`${pathToFileURL(dirForPaths).href}/a%FF`)],
      ["a file: URL with a lone '%' (Bun kept it, Node refuses it)", new URL(`${pathToFileURL(dirForPaths).href}/a%`)],
      ["a file: URL with a short escape", new URL(`${pathToFileURL(dirForPaths).href}/a%2`)],
      ["a file: URL with a remote host", new URL("file://example.com/file.txt")],
      ["a number", 42],
    ];
    test.each(badPaths)("a path that is %s: an error naming path", async (_label, path) => {
      const before = snapshot(dirForPaths);
      const error = await failure(v, path, good);
      expect(["TypeError", "RangeError"]).toContain(error.name as string);
      expect(error.message).toContain("path");
      expect(snapshot(dirForPaths)).toEqual(before);
    });
  });

  // ---------------------------------------------------------------------------------------------

  describe.each(rows(VARIANTS))("%s fails with the right error and changes nothing", (_name, v) => {
    const attempt =
      (path: string, text = "new contents\n") =>
      () =>
        failure(v, path, payload(v, text));

    test("ENOENT when the parent directory does not exist", async () => {
      const dir = tempDir();
      const path = join(dir, "missing", "target");
      await expectFailsCleanly(attempt(path), { path, codes: ["ENOENT"], watch: [dir] });
      const trailing = join(dir, "missing-too/");
      await expectFailsCleanly(attempt(`${trailing}`), { path: trailing, codes: ["ENOENT", "ENOTDIR"], watch: [dir] });
    });

    test("EISDIR when the path is a directory, ends in / naming one, or is a link to one", async () => {
      const dir = tempDir();
      const sub = join(dir, "sub");
      fs.mkdirSync(sub);
      plant(join(sub, "inside"), "keep");
      fs.symlinkSync("sub", join(dir, "link-to-dir"));
      for (const path of [sub, `${sub}/`, join(dir, "link-to-dir")]) {
        await expectFailsCleanly(attempt(path), { path, codes: ["EISDIR"], watch: [dir, sub] });
      }
    });

    test("ENOTDIR when a parent component is a file, or the path is a file followed by /", async () => {
      const dir = tempDir();
      const file = join(dir, "file");
      plant(file, "I am a file", 0o640);
      for (const path of [join(file, "child"), `${file}/`]) {
        await expectFailsCleanly(attempt(path), { path, codes: ["ENOTDIR"], watch: [dir], target: file });
      }
    });

    // A rename over a FIFO, a socket or a device would silently swap it for a plain file.
    test.skipIf(!has("mkfifo"))(
      "EINVAL when the path is a FIFO or (as root, who may make one) a device, or a link to one",
      async () => {
        const dir = tempDir();
        const fifo = join(dir, "fifo");
        run("mkfifo", [fifo]);
        const device = join(dir, "null");
        // The same device as /dev/null; a container without CAP_MKNOD refuses even root, so then
        // the FIFO and the link stand alone.
        const made = isRoot && spawnSync("mknod", [device, "c", "1", "3"]).status === 0;
        fs.symlinkSync("fifo", join(dir, "link-to-fifo"));
        for (const path of [fifo, ...(made ? [device] : []), join(dir, "link-to-fifo")]) {
          await expectFailsCleanly(attempt(path), { path, codes: ["EINVAL"], watch: [dir] });
        }
        expect([fs.lstatSync(fifo).isFIFO(), !made || fs.lstatSync(device).isCharacterDevice()]).toEqual([true, true]);
      },
    );

    test("ELOOP on a symlink loop", async () => {
      const dir = tempDir();
      fs.symlinkSync("b", join(dir, "a"));
      fs.symlinkSync("a", join(dir, "b"));
      fs.symlinkSync("self", join(dir, "self"));
      for (const path of [join(dir, "a"), join(dir, "self")]) {
        await expectFailsCleanly(attempt(path), { path, codes: ["ELOOP"], watch: [dir] });
      }
    });

    test("ENAMETOOLONG on a 256-byte name, yet a 255-byte name is written (the temp name stays in bounds)", async () => {
      const dir = tempDir();
      for (const name of ["a".repeat(256), "é".repeat(128)]) {
        const path = join(dir, name);
        await expectFailsCleanly(attempt(path), { path, codes: ["ENAMETOOLONG"], watch: [dir] });
      }
      for (const name of ["b".repeat(255), "日".repeat(85), `${"c".repeat(253)}é`]) {
        expect(Buffer.byteLength(name)).toBe(255);
        const path = join(dir, name);
        await put(v, path, payload(v, "first"));
        await put(v, path, payload(v, "second"));
        expectFileBytes(path, Buffer.from("second"));
      }
      expect(tempResidue(dir)).toEqual([]);
    });

    test.skipIf(!isRoot)("EROFS on a read-only file system, the existing target kept", async () => {
      const mount = mountTmpfs(64);
      const path = join(mount, "target");
      plant(path, "old contents", 0o640);
      remount(mount, "ro");
      await expectFailsCleanly(attempt(path), { path, codes: ["EROFS"], watch: [mount], target: path });
    });

    test.skipIf(!isRoot)("ENOSPC when the disk is full, the existing target kept", async () => {
      const mount = mountTmpfs(256);
      const path = join(mount, "target");
      plant(path, "old contents", 0o640);
      fillDisk(mount);
      await expectFailsCleanly(attempt(path, "x".repeat(64 * 1024)), {
        path,
        codes: ["ENOSPC"],
        watch: [mount],
        target: path,
      });
    });

    // Root alone may set the attribute. node:fs cannot read it: the portable layer does not check.
    if (settings.ATOMIC_WRITE_FFI !== "0") {
      test.skipIf(!isRoot || !has("chattr"))(
        "EPERM in an append-only directory, before any temp exists there (it could never be removed)",
        async () => {
          const dir = tempDir();
          const path = join(dir, "target");
          plant(path, "old contents", 0o640);
          const fresh = join(dir, "new");
          run("chattr", ["+a", dir]);
          try {
            for (const target of [path, fresh]) {
              await expectFailsCleanly(attempt(target), { path: target, codes: ["EPERM"], watch: [dir], target: path });
            }
          } finally {
            run("chattr", ["-a", dir]);
          }
        },
      );
    }

    test.skipIf(!isRoot)("leaves no descriptor open, after failures as after successes", async () => {
      const mount = mountTmpfs(256);
      const path = join(mount, "target");
      plant(path, "old contents", 0o640);
      // This process's descriptors on that file system: temps (named, or "/mount/#123 (deleted)") and
      // the directory. Counting all of them would count the runtime's own, which come and go.
      const openThere = () =>
        fs.readdirSync("/proc/self/fd").filter((fd) => {
          try {
            return fs.readlinkSync(`/proc/self/fd/${fd}`).startsWith(mount);
          } catch {
            return false; // the descriptor readdirSync itself had open, closed by now
          }
        });
      for (let round = 0; round < 5; round++) await put(v, path, payload(v, `new ${round}`));
      expect(openThere()).toEqual([]);
      fillDisk(mount);
      // Each fails after its temp was opened (the disk is full), so each must close that temp.
      for (let round = 0; round < 5; round++) {
        expect((await failure(v, path, payload(v, "x".repeat(64 * 1024)))).code).toBe("ENOSPC");
      }
      expect(openThere()).toEqual([]);
    });

    test.skipIf(!has("prlimit"))("EFBIG past the file size limit, after resuming the write it cut short", async () => {
      const dir = tempDir();
      const path = join(dir, "target");
      plant(path, "old contents", 0o640);
      // The limit cuts the first write short at 16 KiB and refuses the next: only a writer that
      // resumes short writes reaches EFBIG. SIGXFSZ is ignored (kept across exec), so the process
      // sees the error instead of being killed by the signal. (The data travels as an argument:
      // 64 KiB keeps it under the kernel's 128 KiB limit for one, even in base64.)
      const wrap = ["prlimit", "--fsize=16384", "--", "sh", "-c", 'trap "" XFSZ; exec "$0" "$@"'];
      const data = childPayload(v, "x".repeat(64 * 1024));
      await expectFailsCleanly(() => writeInChild({ fn: v.name, path, data }, { wrap }), {
        path,
        codes: ["EFBIG"],
        watch: [dir],
        target: path,
      });
    });

    // strace counts `when` per thread: the sync functions flush on the main thread, so a flush
    // retried after the failure would succeed there, and the write with it.
    test.skipIf(!has("strace"))("EIO when the temp's fsync fails, never retried as if the data were safe", async () => {
      const dir = tempDir();
      const path = join(dir, "target");
      plant(path, "old contents", 0o640);
      const wrap = injecting("fsync", "error=EIO:when=1");
      await expectFailsCleanly(() => writeInChild({ fn: v.name, path, data: childPayload(v, "new") }, { wrap }), {
        path,
        codes: ["EIO"],
        watch: [dir],
        target: path,
      });
    });

    // Over quota, ext4 refuses a write at once, but NFS (and delayed allocation) may say so only
    // at the fsync, as NFS reports a stale handle; so they are injected there, into every flush
    // (the async driver's are on the pool). Bun's node:fs words both "unknown error". A code outside
    // the library's table (EINVAL here) is worded by the system-call layer, and said once.
    test.skipIf(!has("strace")).each([
      ["EDQUOT when the quota runs out", "EDQUOT", "disk quota exceeded"],
      ["ESTALE when an NFS handle goes stale", "ESTALE", "stale file handle"],
      ["EINVAL, a code outside the library's table,", "EINVAL", "invalid argument"],
    ])("%s at the temp's fsync, named as such, once", async (_when, code, reason) => {
      const dir = tempDir();
      const path = join(dir, "target");
      plant(path, "old contents", 0o640);
      const wrap = injecting("fsync,fdatasync", `error=${code}`);
      let message = "";
      const attempt = () => {
        const result = writeInChild({ fn: v.name, path, data: childPayload(v, "new") }, { wrap });
        message = result.message ?? "";
        return result;
      };
      await expectFailsCleanly(attempt, { path, codes: [code], watch: [dir], target: path });
      expect(message).toStartWith(`${code}: cannot write '${path}' (fsync`);
      expect(message).toEndWith(`: ${reason})`);
      expect(message.split(reason).length).toBe(2); // said once, with nothing after it
    });

    test.skipIf(!has("strace"))("names each temp unpredictably: hidden, 48 random bits, new in every process", () => {
      const dir = tempDir();
      const target = join(dir, "secret");
      const names = [1, 2].map(() => {
        const log = join(tempDir("trace-"), "strace.log");
        const wrap = ["strace", "-f", "-qq", "-e", "trace=openat,linkat", "-o", log];
        const result = writeInChild({ fn: v.name, path: target, data: childPayload(v, "new") }, { wrap });
        expect([result.ok, result.message]).toEqual([true, undefined]);
        // A named temp appears in its openat, an anonymous one in the linkat that names it.
        const temps = [...fs.readFileSync(log, "utf8").matchAll(/"([^"]*\/\.secret\.[^"/]*)"/g)].map((m) => m[1]);
        expect(temps.length).toBeGreaterThan(0);
        return basename(temps[0] as string);
      });
      for (const name of names) expect(name).toMatch(/^\.secret\.[0-9a-f]{12}\.tmp$/);
      expect(names[0]).not.toBe(names[1]);
    });

    // The kernel of this machine gives O_TMPFILE everywhere: strace fails that open (-P: only opens
    // of the target's directory) as a file system without it would. Only where anonymous temps are used.
    if (settings.ATOMIC_WRITE_TMPFILE !== "0" && settings.ATOMIC_WRITE_FFI !== "0") {
      test.skipIf(!has("strace"))(
        "falls back to a named temp where O_TMPFILE is refused with EOPNOTSUPP, EISDIR, EINVAL or ENOSYS",
        () => {
          for (const errno of ["EOPNOTSUPP", "EISDIR", "EINVAL", "ENOSYS"]) {
            const dir = tempDir();
            const target = join(dir, "target");
            plant(target, "old", 0o640);
            const log = join(tempDir("trace-"), "strace.log");
            // An async write first finds the directory's real path (its order key): an open of it too.
            const inject = `inject=openat:error=${errno}:when=${v.isAsync ? 2 : 1}`;
            const wrap = ["strace", "-f", "-qq", "-P", dir, "-e", "trace=openat", "-e", inject, "-o", log];
            const result = writeInChild({ fn: v.name, path: target, data: childPayload(v, "new") }, { wrap });
            expect([errno, result.ok, result.message]).toEqual([errno, true, undefined]);
            expectFileBytes(target, Buffer.from("new"));
            expect(modeOf(target)).toBe(0o640);
            expect(fs.readdirSync(dir)).toEqual(["target"]);
            const trace = fs.readFileSync(log, "utf8");
            // -P traces only the directory's own opens: the refused O_TMPFILE one, then the fsync's.
            expect([errno, trace]).toEqual([errno, expect.stringMatching(/O_TMPFILE.*\(INJECTED\)/)]);
          }
        },
      );
    }

    test.skipIf(!has("strace"))("EIO when the rename fails: the temp removed, and no published flag", async () => {
      const dir = tempDir();
      const path = join(dir, "target");
      plant(path, "old contents", 0o640);
      const renames = "rename,renameat,renameat2";
      const wrap = injecting(renames, "error=EIO");
      await expectFailsCleanly(() => writeInChild({ fn: v.name, path, data: childPayload(v, "new") }, { wrap }), {
        path,
        codes: ["EIO"],
        watch: [dir],
        target: path,
      });
    });

    test.skipIf(!isRoot)("EACCES for an unprivileged user in a directory it may not write", async () => {
      const dir = tempDir();
      const path = join(dir, "target");
      // The file itself is writable by anyone: only the directory stands in the way of a temp.
      plant(path, "old contents", 0o666);
      await expectFailsCleanly(
        () => writeInChild({ fn: v.name, path, data: childPayload(v, "new") }, { user: NOBODY }),
        {
          path,
          codes: ["EACCES", "EPERM"],
          watch: [dir],
          target: path,
        },
      );
    });
  });

  // ---------------------------------------------------------------------------------------------

  describe.each(rows(VARIANTS))("%s reports a write it could not make durable", (_name, v) => {
    test.skipIf(!has("strace"))(
      "as published: true with EIO when the directory's fsync fails, the new contents in place, and says so",
      () => {
        const dir = tempDir();
        const path = join(dir, "target");
        plant(path, "old contents", 0o640);
        // -P keeps the injection to calls on the directory itself: the temp's own fsync succeeds.
        const calls = "fsync,fdatasync";
        const wrap = [
          "strace",
          "-f",
          "-qq",
          "-o",
          "/dev/null",
          "-P",
          dir,
          "-e",
          `trace=${calls}`,
          "-e",
          `inject=${calls}:error=EIO`,
        ];
        const result = writeInChild({ fn: v.name, path, data: childPayload(v, "new") }, { wrap });
        expect([result.ok, result.code, result.published]).toEqual([false, "EIO", true]);
        expect(result.message).toStartWith(`EIO: wrote '${path}', but durability is unconfirmed (fsync`);
        expectFileBytes(path, Buffer.from("new"));
        expect(modeOf(path)).toBe(0o640);
        expect(fs.readdirSync(dir)).toEqual(["target"]);
      },
    );
  });

  // ---------------------------------------------------------------------------------------------

  describe.each(rows(VARIANTS))("%s writes through symlinks", (_name, v) => {
    function expectLink(link: string, pointsTo: string): void {
      expect(fs.lstatSync(link).isSymbolicLink()).toBe(true);
      expect(fs.readlinkSync(link)).toBe(pointsTo);
    }

    test("replaces the link's target and leaves the link a link, with the target's mode", async () => {
      const dir = tempDir();
      plant(join(dir, "real"), "old", 0o640);
      fs.symlinkSync("real", join(dir, "link"));
      await put(v, join(dir, "link"), payload(v, "new"));
      expectLink(join(dir, "link"), "real");
      expectFileBytes(join(dir, "real"), Buffer.from("new"));
      expect(modeOf(join(dir, "real"))).toBe(0o640);
      expect(fs.readdirSync(dir).sort()).toEqual(["link", "real"]);
    });

    test("follows a chain of absolute and relative links to the final file", async () => {
      const dir = tempDir();
      plant(join(dir, "real"), "old", 0o600);
      fs.symlinkSync(join(dir, "real"), join(dir, "l3"));
      fs.symlinkSync("l3", join(dir, "l2"));
      fs.symlinkSync(join(dir, "l2"), join(dir, "l1"));
      await put(v, join(dir, "l1"), payload(v, "new"));
      expectLink(join(dir, "l1"), join(dir, "l2"));
      expectLink(join(dir, "l2"), "l3");
      expectLink(join(dir, "l3"), join(dir, "real"));
      expectFileBytes(join(dir, "real"), Buffer.from("new"));
      expect(modeOf(join(dir, "real"))).toBe(0o600);
      expect(fs.readdirSync(dir).sort()).toEqual(["l1", "l2", "l3", "real"]);
    });

    test("resolves each relative link from its own directory, not the working directory", async () => {
      const dir = tempDir();
      fs.mkdirSync(join(dir, "a"));
      fs.mkdirSync(join(dir, "b"));
      plant(join(dir, "b", "real"), "old");
      fs.symlinkSync("../b/l2", join(dir, "a", "l1"));
      fs.symlinkSync("real", join(dir, "b", "l2"));
      await put(v, join(dir, "a", "l1"), payload(v, "new"));
      expectFileBytes(join(dir, "b", "real"), Buffer.from("new"));
      expectLink(join(dir, "a", "l1"), "../b/l2");
      expectLink(join(dir, "b", "l2"), "real");
      expect(fs.readdirSync(join(dir, "a"))).toEqual(["l1"]);
      expect(fs.readdirSync(join(dir, "b")).sort()).toEqual(["l2", "real"]);
      expect(fs.readdirSync(dir).sort()).toEqual(["a", "b"]);
      expect(fs.readdirSync(scratchCwd)).toEqual([]);
    });

    test("follows '..' after a symlinked directory as the kernel does, to the link target's parent", async () => {
      const dir = tempDir();
      fs.mkdirSync(join(dir, "real", "sub"), { recursive: true });
      plant(join(dir, "real", "t"), "old", 0o640);
      plant(join(dir, "real", "u"), "old u");
      fs.symlinkSync("real/sub", join(dir, "dl")); // dl/.. is real, not dir
      fs.symlinkSync("../t", join(dir, "real", "sub", "f")); // reached as dl/f: real/sub/../t
      await put(v, join(dir, "dl", "f"), payload(v, "new"));
      await put(v, `${join(dir, "dl")}/../u`, payload(v, "new u")); // join() would drop the "dl/.."
      expectFileBytes(join(dir, "real", "t"), Buffer.from("new"));
      expectFileBytes(join(dir, "real", "u"), Buffer.from("new u"));
      expect(modeOf(join(dir, "real", "t"))).toBe(0o640);
      expectLink(join(dir, "real", "sub", "f"), "../t");
      expect(fs.readdirSync(dir).sort()).toEqual(["dl", "real"]);
      expect(fs.readdirSync(join(dir, "real")).sort()).toEqual(["sub", "t", "u"]);
    });

    test("refuses a link whose text ends in '/', which can only name a directory", async () => {
      const dir = tempDir();
      plant(join(dir, "file"), "old", 0o640);
      fs.symlinkSync("newdir/", join(dir, "to-missing-dir"));
      fs.symlinkSync("file/", join(dir, "to-file-as-dir"));
      for (const [link, code] of [
        ["to-missing-dir", "ENOENT"],
        ["to-file-as-dir", "ENOTDIR"],
      ]) {
        const path = join(dir, link as string);
        await expectFailsCleanly(() => failure(v, path, payload(v, "new")), {
          path,
          codes: [code as string],
          watch: [dir],
          target: join(dir, "file"),
        });
      }
    });

    test("creates the missing target of a dangling link (through a chain too)", async () => {
      const dir = tempDir();
      fs.symlinkSync("made.txt", join(dir, "dangling"));
      fs.symlinkSync("dangling", join(dir, "to-dangling"));
      await put(v, join(dir, "to-dangling"), payload(v, "created"));
      expectLink(join(dir, "dangling"), "made.txt");
      expectLink(join(dir, "to-dangling"), "dangling");
      expectFileBytes(join(dir, "made.txt"), Buffer.from("created"));
      expect(modeOf(join(dir, "made.txt"))).toBe(0o666 & ~readUmask());
      expect(fs.readdirSync(dir).sort()).toEqual(["dangling", "made.txt", "to-dangling"]);
    });

    test.skipIf(!isRoot)(
      "puts the temp beside the real target in another directory, never in the link's (read-only) one",
      async () => {
        const links = mountTmpfs(64);
        const real = tempDir();
        plant(join(real, "file"), "old", 0o640);
        fs.symlinkSync(join(real, "file"), join(links, "link"));
        // A temp created next to the link, on this file system, would now fail with EROFS.
        remount(links, "ro");
        const before = snapshot(links);
        await put(v, join(links, "link"), payload(v, "new"));
        expectFileBytes(join(real, "file"), Buffer.from("new"));
        expect(modeOf(join(real, "file"))).toBe(0o640);
        expect(fs.readdirSync(real)).toEqual(["file"]);
        expect(snapshot(links)).toEqual(before);
      },
    );
  });
});

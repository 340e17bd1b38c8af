/**
 * Batches (SPEC "Beyond the seed", Batch): `atomicWriteMany` and `atomicWriteManyAsync` write every
 * entry; stage every file before renaming any (seen in a real syscall trace); fsync each distinct
 * directory once, however it is spelled; leave every target as it was when staging fails; stop at a
 * failed rename (a real injected EIO) and say what was already replaced; refuse two entries naming
 * one file, and bad arguments, before touching the disk; honour `ifChanged` and `durable: false`;
 * and hold a bounded number of descriptors in a large batch.
 */
import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import { atomicWriteMany, atomicWriteManyAsync, type BatchEntry } from "../index.ts";
import type { BatchChildRequest, BatchChildResult } from "./fixtures/batch-child.ts";
import {
  BUN,
  cleanup,
  type Failure,
  failureOf,
  fdFile,
  fillDisk,
  has,
  isRoot,
  modeOf,
  mountTmpfs,
  parseTrace,
  plant,
  ROOT,
  ROOT_ONLY,
  remount,
  type Syscall,
  snapshot,
  TEMP_KINDS,
  TIMEOUT_MS,
  tempDir,
  tempResidue,
  useTempKind,
} from "./helpers.ts";

setDefaultTimeout(TIMEOUT_MS);
afterAll(cleanup);

// ---------------------------------------------------------------------------------------------
// The two functions, driven through one table so every contract holds for each.

/** The argument-error tests pass what the signatures refuse, so calls go through this loose type. */
type Loose = (entries?: unknown, options?: unknown) => unknown;

interface Variant {
  name: BatchChildRequest["fn"];
  isAsync: boolean;
  fn: Loose;
}

const VARIANTS: Variant[] = [
  { name: "atomicWriteMany", isAsync: false, fn: atomicWriteMany as Loose },
  { name: "atomicWriteManyAsync", isAsync: true, fn: atomicWriteManyAsync as Loose },
];

/** A successful call: the sync function returns nothing, the async one a promise that resolves. */
async function put(v: Variant, entries: unknown, options?: unknown): Promise<void> {
  const returned = v.fn(entries, options);
  if (v.isAsync) {
    expect(returned).toBeInstanceOf(Promise);
    await returned;
  } else {
    expect(returned).toBeUndefined();
  }
}

/** A call that must fail: the sync function throws, the async one rejects (and never throws). */
function failure(v: Variant, entries: unknown, options?: unknown): Promise<Failure> {
  return failureOf(v.name, v.isAsync, () => v.fn(entries, options));
}

const hex = (text: string) => Buffer.from(text, "hex");

/** Bytes and mode of each existing file, to compare after a failure. */
function contentsOf(paths: string[]): { path: string; hex: string; mode: number }[] {
  return paths.map((path) => ({ path, hex: fs.readFileSync(path).toString("hex"), mode: modeOf(path) }));
}

/** Inode, times and mode, in nanoseconds: what an untouched file keeps. */
function identity(file: string) {
  const stat = fs.statSync(file, { bigint: true });
  return { ino: stat.ino, mtimeNs: stat.mtimeNs, ctimeNs: stat.ctimeNs, mode: stat.mode & 0o7777n };
}

/** Runs `body` (and waits for it) with this umask, restoring the old one after. */
async function withUmask(mask: number, body: () => Promise<void>): Promise<void> {
  const previous = process.umask(mask);
  try {
    await body();
  } finally {
    process.umask(previous);
  }
}

// ---------------------------------------------------------------------------------------------
// Batches in a child process (test/fixtures/batch-child.ts): traced, failed by strace, or limited.

const BATCH_CHILD = join(ROOT, "test", "fixtures", "batch-child.ts");

/** Runs the batches one after the other in one child, wrapped in `wrap` (strace, prlimit); their results. */
function batchesInChild(requests: BatchChildRequest[], wrap: string[] = []): BatchChildResult[] {
  const env: Record<string, string | undefined> = { ...process.env, HOME: tmpdir() };
  // The test process may be inside a temp-kind block: each request sets the kind it wants.
  delete env.ATOMIC_WRITE_TMPFILE;
  const argv = [...wrap, BUN, BATCH_CHILD, JSON.stringify(requests)];
  const raw = spawnSync(argv[0] as string, argv.slice(1), { encoding: "utf8", env });
  const line = raw.stdout.trim().split("\n").pop() ?? "";
  try {
    return JSON.parse(line) as BatchChildResult[];
  } catch {
    throw new Error(`batch child printed no result (status ${raw.status}): ${raw.stderr}`);
  }
}

/** The quoted path arguments of a call (a rename's source and destination; every path here is absolute). */
function quotedPaths(call: Syscall): string[] {
  return [...call.args.matchAll(/"([^"]*)"/g)].map((match) => match[1] as string);
}

const FLUSHES = new Set(["fsync", "fdatasync", "sync_file_range", "syncfs", "sync", "msync"]);
const RENAMES = new Set(["rename", "renameat", "renameat2"]);

/** A temp of one of `dirs`: an anonymous inode (`#123`) or a hidden `.name.hex.tmp`. */
function isTempIn(file: string | undefined, dirs: string[]): boolean {
  if (file === undefined || !dirs.includes(dirname(file))) return false;
  return /^#\d+ \(deleted\)$/.test(basename(file)) || /^\..+\.tmp$/.test(basename(file));
}

// ---------------------------------------------------------------------------------------------

describe.each(TEMP_KINDS)("with $name,", ({ env }) => {
  useTempKind(env);

  describe.each(VARIANTS.map((v) => [v.name, v] as const))("%s", (_name, v) => {
    test("writes every entry: text in its own encoding, bytes of every kind, each with its exact mode", async () => {
      const [a, b, c] = [tempDir("batch-a-"), tempDir("batch-b-"), tempDir("batch-c-")];
      plant(join(c, "kept-mode.bin"), "old", 0o600);
      const backing = Uint8Array.of(10, 11, 12, 13, 14, 15);
      // Expected bytes are written out by hand from the encodings' definitions, not computed by Buffer.
      const wanted: [entry: BatchEntry, bytes: string, mode: number][] = [
        [{ path: join(a, "utf8.txt"), data: "aé😀\r\n", mode: 0o640 }, "61c3a9f09f98800d0a", 0o640],
        // 0o604 and 0o777 would lose bits to the umask (0o027): chmod semantics keep them.
        [{ path: join(a, "latin1.txt"), data: "aéÿ\r\n", encoding: "latin1", mode: 0o604 }, "61e9ff0d0a", 0o604],
        // A new file with no mode: what open(O_CREAT, 0o666) gives under the umask.
        [{ path: join(b, "utf16.txt"), data: "aé😀", encoding: "utf16le" }, "6100e9003dd800de", 0o640],
        [{ path: join(b, "buffer.bin"), data: Buffer.from("héllo", "utf8"), mode: 0o755 }, "68c3a96c6c6f", 0o755],
        // An existing target keeps its mode when none is given.
        [{ path: join(c, "kept-mode.bin"), data: Uint8Array.of(0, 1, 127, 128, 255) }, "00017f80ff", 0o600],
        [{ path: join(c, "array-buffer.bin"), data: Uint8Array.of(9, 8, 7).buffer, mode: 0o777 }, "090807", 0o777],
        [{ path: join(c, "view.bin"), data: new DataView(backing.buffer, 2, 3), mode: 0o400 }, "0c0d0e", 0o400],
      ];
      const entries = Object.freeze(wanted.map(([entry]) => Object.freeze({ ...entry })));
      const options = Object.freeze({ durable: true, ifChanged: false });
      const entriesBefore = entries.map((entry) => ({ ...entry }));
      await withUmask(0o027, () => put(v, entries, options));
      for (const [entry, bytes, mode] of wanted) {
        const written = fs.readFileSync(entry.path as string).toString("hex");
        expect({ path: entry.path, hex: written }).toEqual({ path: entry.path, hex: bytes });
        expect({ path: entry.path, mode: modeOf(entry.path as string) }).toEqual({ path: entry.path, mode });
      }
      // Frozen, so any attempt to modify them would have thrown; and they still read the same.
      expect(entries.map((entry) => ({ ...entry }))).toEqual(entriesBefore);
      expect(options).toEqual({ durable: true, ifChanged: false });
      for (const dir of [a, b, c]) expect(tempResidue(dir)).toEqual([]);
    });

    test("does nothing, successfully, for an empty batch", async () => {
      const dir = tempDir("batch-");
      const before = snapshot(dir);
      await put(v, []);
      expect(snapshot(dir)).toEqual(before);
    });

    describe("if staging fails for any entry, removes every temp and changes no target", () => {
      interface StagingCase {
        entries: BatchEntry[];
        /** The failing entry's path, as given: the message must name it. */
        failing: string;
        codes: string[];
        /** Every directory involved: each must be exactly as it was. */
        watch: string[];
      }

      /**
       * entries[0] (staged, its temp already named, when entries[1] fails) and entries[2] (never
       * reached) replace existing files in two other directories; entries[3] would create a new file.
       */
      function scene(failing: string, failingDir: string, codes: string[]): StagingCase {
        const [a, b] = [tempDir("stage-a-"), tempDir("stage-b-")];
        plant(join(a, "first.txt"), "old first", 0o640);
        plant(join(b, "third.txt"), "old third", 0o604);
        const entries: BatchEntry[] = [
          { path: join(a, "first.txt"), data: "new first ".repeat(100) },
          { path: failing, data: Buffer.alloc(64 * 1024, 7) },
          { path: join(b, "third.txt"), data: "new third", mode: 0o600 },
          { path: join(a, "fourth.txt"), data: "new fourth" },
        ];
        return { entries, failing, codes, watch: [a, b, failingDir] };
      }

      async function expectStagingFailsCleanly({ entries, failing, codes, watch }: StagingCase): Promise<void> {
        const before = watch.map((dir) => snapshot(dir));
        const existing = entries
          .map((e) => e.path as string)
          .filter((path) => fs.statSync(path, { throwIfNoEntry: false })?.isFile());
        const old = contentsOf(existing);
        const error = await failure(v, entries);
        expect(codes).toContain(error.code as string);
        expect(error.message).toContain(failing);
        // Nothing was published: no `published` (nor `renamed`) property at all.
        expect(Object.hasOwn(error, "published")).toBe(false);
        expect(Object.hasOwn(error, "renamed")).toBe(false);
        expect(contentsOf(existing)).toEqual(old);
        expect(watch.map((dir) => snapshot(dir))).toEqual(before);
      }

      test("when an entry's directory does not exist (ENOENT)", async () => {
        const parent = tempDir("stage-missing-");
        await expectStagingFailsCleanly(scene(join(parent, "missing", "second.bin"), parent, ["ENOENT"]));
      });

      test("when an entry's path is an existing directory (EISDIR)", async () => {
        const parent = tempDir("stage-dir-");
        fs.mkdirSync(join(parent, "second.bin"));
        await expectStagingFailsCleanly(scene(join(parent, "second.bin"), parent, ["EISDIR"]));
      });

      test.skipIf(!isRoot)(`when an entry is on a read-only file system (EROFS; ${ROOT_ONLY})`, async () => {
        const mount = mountTmpfs(64);
        plant(join(mount, "second.bin"), "old second", 0o644);
        remount(mount, "ro");
        await expectStagingFailsCleanly(scene(join(mount, "second.bin"), mount, ["EROFS"]));
      });

      test.skipIf(!isRoot)(`when an entry's disk is full (ENOSPC; ${ROOT_ONLY})`, async () => {
        const mount = mountTmpfs(256);
        plant(join(mount, "second.bin"), "old second", 0o644);
        fillDisk(mount);
        await expectStagingFailsCleanly(scene(join(mount, "second.bin"), mount, ["ENOSPC"]));
      });
    });

    describe("with ifChanged: true", () => {
      test("leaves an entry whose target already holds exactly its bytes and mode alone, and writes the others", async () => {
        const [a, b] = [tempDir("changed-a-"), tempDir("changed-b-")];
        const same = join(a, "same.txt");
        const sameExplicit = join(b, "same-explicit-mode.bin");
        const differs = join(a, "differs.txt");
        const modeDiffers = join(b, "mode-differs.txt");
        const fresh = join(b, "fresh.txt");
        plant(same, "unchanged output\n", 0o640);
        plant(sameExplicit, hex("00ff10"), 0o600);
        plant(differs, "old output\n", 0o640);
        plant(modeDiffers, "same bytes\n", 0o640);
        const old = new Date("2001-02-03T04:05:06Z");
        for (const file of [same, sameExplicit, differs, modeDiffers]) fs.utimesSync(file, old, old);
        const before = { same: identity(same), sameExplicit: identity(sameExplicit) };
        const replaced = { differs: identity(differs), modeDiffers: identity(modeDiffers) };

        await put(
          v,
          [
            { path: same, data: "unchanged output\n" },
            { path: differs, data: "new output\n" },
            { path: sameExplicit, data: hex("00ff10"), mode: 0o600 },
            { path: modeDiffers, data: "same bytes\n", mode: 0o644 },
            { path: fresh, data: "fresh\n" },
          ],
          { ifChanged: true },
        );

        expect(identity(same)).toEqual(before.same);
        expect(identity(sameExplicit)).toEqual(before.sameExplicit);
        expect(fs.readFileSync(differs, "utf8")).toBe("new output\n");
        expect(identity(differs).ino).not.toBe(replaced.differs.ino);
        expect(modeOf(differs)).toBe(0o640);
        expect(fs.readFileSync(modeDiffers, "utf8")).toBe("same bytes\n");
        expect(identity(modeDiffers).ino).not.toBe(replaced.modeDiffers.ino);
        expect(modeOf(modeDiffers)).toBe(0o644);
        expect(fs.readFileSync(fresh, "utf8")).toBe("fresh\n");
        expect([...tempResidue(a), ...tempResidue(b)]).toEqual([]);
      });
    });
  });
});

// ---------------------------------------------------------------------------------------------
// Two entries naming one file, and bad arguments: refused before anything is written.

describe.each(VARIANTS.map((v) => [v.name, v] as const))("%s refuses before writing anything", (_name, v) => {
  interface Duplicate {
    what: string;
    /** Sets up `dir` and returns the two spellings of one file. */
    make: (dir: string) => [string, string];
  }

  const DUPLICATES: Duplicate[] = [
    { what: "the same string twice", make: (dir) => [join(dir, "a"), join(dir, "a")] },
    { what: "a spelling with ./ (dir/a and dir/./a)", make: (dir) => [join(dir, "a"), `${dir}/./a`] },
    {
      what: "a spelling with .. (dir/a and dir/sub/../a)",
      make: (dir) => {
        fs.mkdirSync(join(dir, "sub"));
        return [join(dir, "a"), `${dir}/sub/../a`];
      },
    },
    {
      what: "a symlink to another entry's file",
      make: (dir) => {
        plant(join(dir, "a"), "old a");
        fs.symlinkSync("a", join(dir, "link"));
        return [join(dir, "a"), join(dir, "link")];
      },
    },
    {
      what: "a path through a symlinked directory and .. (dl/../x with real/x, where dl -> real/sub)",
      make: (dir) => {
        fs.mkdirSync(join(dir, "real", "sub"), { recursive: true });
        fs.symlinkSync("real/sub", join(dir, "dl"));
        // For the kernel, dl/.. is real (the parent of dl's target), not dir.
        return [`${dir}/dl/../x`, join(dir, "real", "x")];
      },
    },
  ];

  describe("two entries that are one file, with a TypeError", () => {
    test.each(DUPLICATES.map((d) => [d.what, d] as const))("%s", async (_what, { make }) => {
      const dir = tempDir("dup-");
      const [first, second] = make(dir);
      const watch = [dir, join(dir, "real"), join(dir, "real", "sub"), join(dir, "sub")].filter((d) =>
        fs.existsSync(d),
      );
      const before = watch.map((d) => snapshot(d));
      // A good entry ahead of the pair: it must not be written either.
      const entries = [
        { path: join(dir, "other"), data: "other" },
        { path: first, data: "one" },
        { path: second, data: "two" },
      ];
      const error = await failure(v, entries);
      expect(error.name).toBe("TypeError");
      expect(error.message).toContain("entries[2]");
      expect(error.message).toContain(second);
      expect(watch.map((d) => snapshot(d))).toEqual(before);
    });
  });

  test("accepts dl/../x beside a different file x in dl's own parent (the kernel reaches two files)", async () => {
    const dir = tempDir("dup-");
    fs.mkdirSync(join(dir, "real", "sub"), { recursive: true });
    fs.symlinkSync("real/sub", join(dir, "dl"));
    await put(v, [
      { path: `${dir}/dl/../x`, data: "through the link" },
      { path: join(dir, "x"), data: "beside the link" },
    ]);
    expect(fs.readFileSync(join(dir, "real", "x"), "utf8")).toBe("through the link");
    expect(fs.readFileSync(join(dir, "x"), "utf8")).toBe("beside the link");
  });

  describe("bad arguments, with a TypeError or RangeError naming the argument", () => {
    type Case = [
      what: string,
      errorName: string,
      mentions: string[],
      make: (good: BatchEntry[], path: string) => [unknown, unknown?],
    ];
    const withSecond = (good: BatchEntry[], second: unknown): unknown[] => [good[0], second, good[1]];
    const CASES: Case[] = [
      ["entries not an array", "TypeError", ["entries"], (good) => [good[0]]],
      ["entries missing", "TypeError", ["entries"], () => [undefined]],
      ["an entry that is a number", "TypeError", ["entries[1]"], (good) => [withSecond(good, 5)]],
      ["an entry that is null", "TypeError", ["entries[1]"], (good) => [withSecond(good, null)]],
      [
        "a hole in a sparse array (not an entry to skip)",
        "TypeError",
        ["entries[1]"],
        // biome-ignore lint/suspicious/noSparseArray: the hole is the case under test
        (good) => [[good[0], , good[1]]],
      ],
      [
        "data of a wrong type",
        "TypeError",
        ["entries[1]", "data must be a string, Uint8Array"],
        (good, path) => [withSecond(good, { path, data: 5 })],
      ],
      [
        "data missing",
        "TypeError",
        ["entries[1]", "data must be a string, Uint8Array"],
        (good, path) => [withSecond(good, { path })],
      ],
      [
        "a mode above 0o7777",
        "RangeError",
        ["entries[1]", "mode"],
        (good, path) => [withSecond(good, { path, data: "", mode: 0o10000 })],
      ],
      [
        "a negative mode",
        "RangeError",
        ["entries[1]", "mode"],
        (good, path) => [withSecond(good, { path, data: "", mode: -1 })],
      ],
      [
        "a fractional mode",
        "RangeError",
        ["entries[1]", "mode"],
        (good, path) => [withSecond(good, { path, data: "", mode: 1.5 })],
      ],
      [
        "a mode given as a string",
        "TypeError",
        ["entries[1]", "mode"],
        (good, path) => [withSecond(good, { path, data: "", mode: "644" })],
      ],
      [
        "an unknown encoding",
        "RangeError",
        ["entries[1]", "encoding"],
        (good, path) => [withSecond(good, { path, data: "", encoding: "no-such-encoding" })],
      ],
      [
        "an unknown encoding beside bytes (where it means nothing, but is still a mistake)",
        "RangeError",
        ["entries[1]", "encoding"],
        (good, path) => [withSecond(good, { path, data: Buffer.from("x"), encoding: "no-such-encoding" })],
      ],
      ["an empty path", "TypeError", ["entries[1]", "path"], (good) => [withSecond(good, { path: "", data: "" })]],
      [
        "a path with a NUL byte",
        "TypeError",
        ["entries[1]", "path"],
        (good) => [withSecond(good, { path: "a\0b", data: "" })],
      ],
      [
        "a path that is a number",
        "TypeError",
        ["entries[1]", "path"],
        (good) => [withSecond(good, { path: 42, data: "" })],
      ],
      ["options that are not an object", "TypeError", ["options"], (good) => [good, 5]],
      ["options.durable not a boolean", "TypeError", ["options.durable"], (good) => [good, { durable: "yes" }]],
      ["options.ifChanged not a boolean", "TypeError", ["options.ifChanged"], (good) => [good, { ifChanged: 1 }]],
    ];

    test.each(CASES)("%s", async (_what, errorName, mentions, make) => {
      const dir = tempDir("args-");
      plant(join(dir, "existing.txt"), "old existing", 0o640);
      const before = snapshot(dir);
      // Good entries on either side of the bad one: neither may be written.
      const good: BatchEntry[] = [
        { path: join(dir, "existing.txt"), data: "new existing" },
        { path: join(dir, "new.txt"), data: "new" },
      ];
      // The bad entry's own path is in `dir` too, so that a write that should not happen shows there.
      const [entries, options] = make(good, join(dir, "bad.txt"));
      const error = await failure(v, entries, options);
      expect(error.name).toBe(errorName);
      for (const mention of mentions) expect(error.message).toContain(mention);
      expect(snapshot(dir)).toEqual(before);
    });
  });
});

// ---------------------------------------------------------------------------------------------
// The order of the protocol, and its failures, seen in a child process by strace. Several batches
// share one child: a Bun start-up costs more than a small batch.

const TRACED_CALLS = [
  "openat,open,write,pwrite64,linkat,close,unlink",
  "fsync,fdatasync,sync_file_range,syncfs,sync,msync",
  "rename,renameat,renameat2",
].join(",");

/** One batch for a traced child: A/x, then B/z, then a third entry in A, spelled as its layout says. */
interface Scene {
  root: string;
  A: string;
  B: string;
  paths: string[];
  request: BatchChildRequest;
}

type Spelling = (root: string) => string;
const SAME_SPELLING: Spelling = (root) => join(root, "A", "y");
const SPELLINGS: [string, Spelling][] = [
  ["A/x and A/./y", (root) => `${root}/A/./y`],
  ["A/x and L/y, where L -> A", (root) => join(root, "L", "y")],
];

function prepare(v: Variant, third: Spelling, extra: Pick<BatchChildRequest, "options" | "tmpfile"> = {}): Scene {
  const root = tempDir("traced-");
  const [A, B] = [join(root, "A"), join(root, "B")];
  fs.mkdirSync(A);
  fs.mkdirSync(B);
  fs.symlinkSync("A", join(root, "L"));
  for (const path of [join(A, "x"), join(A, "y"), join(B, "z")]) plant(path, `old ${basename(path)}`);
  const paths = [join(A, "x"), join(B, "z"), third(root)];
  const request = { fn: v.name, entries: paths.map((path, i) => ({ path, data: `new ${i}` })), ...extra };
  return { root, A, B, paths, request };
}

/** The calls of each scene: from its first mention of its root to the next scene's. */
function traceScenes(scenes: Scene[]): Syscall[][] {
  const log = join(tempDir("trace-"), "strace.log");
  const results = batchesInChild(
    scenes.map((scene) => scene.request),
    ["strace", "-f", "-qq", "-y", "-o", log, "-e", `trace=${TRACED_CALLS}`],
  );
  expect(results).toEqual(scenes.map(() => ({ ok: true })));
  for (const scene of scenes) {
    for (const [i, path] of scene.paths.entries()) expect(fs.readFileSync(path, "utf8")).toBe(`new ${i}`);
    expect([...tempResidue(scene.A), ...tempResidue(scene.B)]).toEqual([]);
  }
  const calls = parseTrace(fs.readFileSync(log, "utf8"));
  const starts = scenes.map((scene) => calls.findIndex((c) => c.args.includes(`${scene.root}/`)));
  expect(starts.every((start, i) => start >= 0 && (i === 0 || start > (starts[i - 1] as number)))).toBe(true);
  return starts.map((start, i) => calls.slice(start, starts[i + 1] ?? calls.length));
}

/** Every traced scene of one function, run once (in one child) and shared by the tests below. */
function tracedScenes(v: Variant) {
  let done = traced.get(v.name);
  if (!done) {
    const durable = TEMP_KINDS.map(({ env }) => prepare(v, SAME_SPELLING, { tmpfile: env }));
    const spelled = SPELLINGS.map(([, third]) => prepare(v, third));
    const nondurable = TEMP_KINDS.map(({ env }) =>
      prepare(v, SAME_SPELLING, { tmpfile: env, options: { durable: false } }),
    );
    const calls = traceScenes([...durable, ...spelled, ...nondurable]);
    const at = (scenes: Scene[], offset: number) =>
      scenes.map((scene, i) => ({ ...scene, calls: calls[offset + i] as Syscall[] }));
    done = {
      durable: at(durable, 0),
      spelled: at(spelled, durable.length),
      nondurable: at(nondurable, durable.length + spelled.length),
    };
    traced.set(v.name, done);
  }
  return done;
}

const traced = new Map<string, { [K in "durable" | "spelled" | "nondurable"]: (Scene & { calls: Syscall[] })[] }>();

/** The successful flushes of the directories themselves (by their descriptors' paths). */
function directorySyncs(calls: Syscall[], dirs: string[]): Syscall[] {
  return calls.filter((c) => FLUSHES.has(c.name) && c.result === "0" && dirs.includes(fdFile(c) as string));
}

describe.skipIf(!has("strace"))("in a syscall trace (strace, in a child)", () => {
  describe.each(VARIANTS.map((v) => [v.name, v] as const))("%s", (_name, v) => {
    describe.each(TEMP_KINDS.map((kind, i) => [kind.name, i] as const))("with %s", (_kind, k) => {
      test("fsyncs every temp before the first rename, then renames them all, then fsyncs each directory once", () => {
        const { A, B, paths, calls } = tracedScenes(v).durable[k] as Scene & { calls: Syscall[] };
        const dirs = [A, B];
        const renames = calls.filter((c) => RENAMES.has(c.name) && c.result === "0");
        expect(renames.map((c) => quotedPaths(c)[1])).toEqual(paths);
        const first = renames[0] as Syscall;
        const last = renames[renames.length - 1] as Syscall;

        const tempSyncs = calls.filter((c) => FLUSHES.has(c.name) && c.result === "0" && isTempIn(fdFile(c), dirs));
        // Every temp was flushed (three distinct inodes or names), all before the first rename.
        expect(new Set(tempSyncs.map((c) => fdFile(c))).size).toBe(paths.length);
        for (const sync of tempSyncs) expect(sync.end).toBeLessThan(first.start);
        // Between the first and the last rename nothing else touches A or B: the renames come together.
        const between = calls.filter(
          (c) =>
            c.start > first.start && c.start < last.end && !RENAMES.has(c.name) && dirs.some((d) => c.args.includes(d)),
        );
        expect(between).toEqual([]);

        // A holds two of the files, B one: two directory flushes, both after the last rename.
        const dirSyncs = directorySyncs(calls, dirs);
        expect(dirSyncs.map((c) => fdFile(c)).sort()).toEqual([A, B].sort());
        for (const sync of dirSyncs) expect(sync.start).toBeGreaterThan(last.end);
      });

      test("with durable: false makes no fsync or fdatasync at all, and still writes every entry", () => {
        const { paths, calls } = tracedScenes(v).nondurable[k] as Scene & { calls: Syscall[] };
        // The durable batches of the same child did flush (test above): this silence can fail.
        expect(calls.filter((c) => FLUSHES.has(c.name))).toEqual([]);
        // The trace did see this batch, every rename of it: its silence is not a blind spot.
        expect(calls.filter((c) => RENAMES.has(c.name) && c.result === "0").map((c) => quotedPaths(c)[1])).toEqual(
          paths,
        );
      });
    });

    test.each(SPELLINGS.map(([what], i) => [what, i] as const))(
      "fsyncs a directory once however it is spelled: %s, with B/z, make two directory fsyncs",
      (_what, i) => {
        const { A, B, calls } = tracedScenes(v).spelled[i] as Scene & { calls: Syscall[] };
        expect(
          directorySyncs(calls, [A, B])
            .map((c) => fdFile(c))
            .sort(),
        ).toEqual([A, B].sort());
      },
    );
  });
});

describe.skipIf(!has("strace"))("bad arguments in a syscall trace (strace, in a child)", () => {
  describe.each(VARIANTS.map((v) => [v.name, v] as const))("%s", (_name, v) => {
    test("refuses a bad later entry with no system call on any path of the batch (SPEC: before anything on disk is touched)", () => {
      const dir = tempDir("badlater-");
      plant(join(dir, "a"), "old a", 0o640);
      const before = snapshot(dir);
      const good = { path: join(dir, "a"), data: "new a" };
      const requests: BatchChildRequest[] = [
        { fn: v.name, entries: [good, { path: "", data: "b" }] },
        { fn: v.name, entries: [good, { path: join(dir, "b"), data: "b", mode: 0o10000 }] },
      ];
      const log = join(tempDir("trace-"), "strace.log");
      const results = batchesInChild(requests, ["strace", "-f", "-qq", "-o", log, "-e", "trace=%file,%desc"]);
      expect(results.map((r) => [r.ok, r.name, r.message?.includes("entries[1]")])).toEqual([
        [false, "TypeError", true],
        [false, "RangeError", true],
      ]);
      // The trace did run (the child's own start-up is in it), and none of its calls names the batch's directory.
      const trace = fs.readFileSync(log, "utf8");
      expect(trace).toContain("batch-child.ts");
      expect(trace.split("\n").filter((line) => line.includes(dir))).toEqual([]);
      expect(snapshot(dir)).toEqual(before);
    });
  });
});

describe.skipIf(!has("strace"))("a rename that fails (EIO injected by strace, in a child)", () => {
  /**
   * Two batches of A/x, B/y, A/z, each file holding old data, in one child whose 2nd and 3rd
   * rename(2) fail: the first batch's second rename, then the second batch's first. Only the
   * library calls rename(2) on the child's main thread (Bun's own cache uses renameat, on another),
   * and both drivers rename there; the trace shows which calls were hit.
   */
  function failRenames(v: Variant, tmpfile: string | undefined) {
    const scenes = [0, 1].map(() => {
      const root = tempDir("renamefail-");
      const [A, B] = [join(root, "A"), join(root, "B")];
      fs.mkdirSync(A);
      fs.mkdirSync(B);
      const paths = [join(A, "x"), join(B, "y"), join(A, "z")];
      for (const path of paths) plant(path, `old ${basename(path)}`, 0o640);
      const request = { fn: v.name, entries: paths.map((path) => ({ path, data: `new ${basename(path)}` })), tmpfile };
      return { root, A, B, paths, request };
    });
    const log = join(tempDir("trace-"), "inject.log");
    const wrap = ["strace", "-f", "-qq", "-y", "-o", log, "-e", `trace=${TRACED_CALLS}`];
    wrap.push("-e", "inject=rename:error=EIO:when=2..3");
    const results = batchesInChild(
      scenes.map((scene) => scene.request),
      wrap,
    );
    const calls = parseTrace(fs.readFileSync(log, "utf8"));
    const injected = calls.filter((c) => RENAMES.has(c.name) && c.result.includes("(INJECTED)"));
    expect(injected.map((c) => quotedPaths(c)[1])).toEqual([scenes[0]?.paths[1], scenes[1]?.paths[0]]);
    const [atSecond, atFirst] = scenes.map((scene, i) => ({ ...scene, result: results[i], calls }));
    return { atSecond: atSecond as NonNullable<typeof atSecond>, atFirst: atFirst as NonNullable<typeof atFirst> };
  }

  const runs = new Map<string, ReturnType<typeof failRenames>>();
  function failed(v: Variant, tmpfile: string | undefined) {
    const key = `${v.name} ${tmpfile}`;
    if (!runs.has(key)) runs.set(key, failRenames(v, tmpfile));
    return runs.get(key) as ReturnType<typeof failRenames>;
  }

  describe.each(VARIANTS.map((v) => [v.name, v] as const))("%s", (_name, v) => {
    describe.each(TEMP_KINDS.map((kind) => [kind.name, kind.env] as const))("with %s", (_kind, env) => {
      test("after the first rename: tries no other, removes the other temps, fsyncs what it touched, and says published and renamed", () => {
        const { A, B, paths, result, calls } = failed(v, env).atSecond;
        expect(result).toMatchObject({ ok: false, code: "EIO", published: true, renamed: [paths[0]] });
        expect(result?.message).toContain(paths[1] as string);
        const renames = calls.filter((c) => RENAMES.has(c.name) && paths.includes(quotedPaths(c)[1] as string));
        expect(renames).toHaveLength(2); // the one that worked, the one that failed, and no more
        expect(fs.readFileSync(paths[0] as string, "utf8")).toBe("new x");
        expect(fs.readFileSync(paths[1] as string, "utf8")).toBe("old y");
        expect(fs.readFileSync(paths[2] as string, "utf8")).toBe("old z");
        for (const path of paths) expect(modeOf(path)).toBe(0o640);
        expect([...tempResidue(A), ...tempResidue(B)]).toEqual([]);
        // A received the rename that did happen: it is made durable even so, after the failure.
        const failure = renames[1] as Syscall;
        const dirSyncs = directorySyncs(calls, [A, B]);
        expect(dirSyncs.map((c) => fdFile(c))).toEqual([A]);
        expect((dirSyncs[0] as Syscall).start).toBeGreaterThan(failure.end);
      });

      test("at the first rename: nothing replaced, no temp left, and no published property at all", () => {
        const { A, B, paths, result } = failed(v, env).atFirst;
        expect(result).toMatchObject({ ok: false, code: "EIO", hasPublished: false, hasRenamed: false });
        expect(result?.message).toContain(paths[0] as string);
        for (const path of paths) {
          expect(fs.readFileSync(path, "utf8")).toBe(`old ${basename(path)}`);
          expect(modeOf(path)).toBe(0o640);
        }
        expect([...tempResidue(A), ...tempResidue(B)]).toEqual([]);
      });
    });
  });

  /**
   * The sync function only: strace counts an `inject` per thread, and only the sync driver makes
   * every fsync on the main thread, where the 4th is the directory's (after three temps'). Both
   * drivers run the same plan, so the precedence it pins holds for both.
   */
  describe.each(TEMP_KINDS.map((kind) => [kind.name, kind.env] as const))("with %s", (_kind, env) => {
    test("when the directory fsync then fails too, reports the failed rename, the one that left targets unreplaced", () => {
      const root = tempDir("renamefail-");
      const A = join(root, "A");
      fs.mkdirSync(A);
      const paths = ["x", "y", "z"].map((name) => join(A, name));
      for (const path of paths) plant(path, `old ${basename(path)}`, 0o640);
      const log = join(tempDir("trace-"), "inject.log");
      const wrap = ["strace", "-f", "-qq", "-y", "-o", log, "-e", `trace=${TRACED_CALLS}`];
      wrap.push("-e", "inject=rename:error=EIO:when=2", "-e", "inject=fsync:error=ENOSPC:when=4");
      const entries = paths.map((path) => ({ path, data: `new ${basename(path)}` }));
      const [result] = batchesInChild([{ fn: "atomicWriteMany", entries, tmpfile: env }], wrap);
      const calls = parseTrace(fs.readFileSync(log, "utf8"));
      const injected = calls.filter((c) => c.result.includes("(INJECTED)"));
      expect(injected.map((c) => [c.name, c.name === "fsync" ? fdFile(c) : quotedPaths(c)[1]])).toEqual([
        ["rename", paths[1]],
        ["fsync", A],
      ]);
      expect(result).toMatchObject({ ok: false, code: "EIO", published: true, renamed: [paths[0]] });
      expect(result?.message).toContain(paths[1] as string);
      expect(fs.readFileSync(paths[0] as string, "utf8")).toBe("new x");
      expect(fs.readFileSync(paths[1] as string, "utf8")).toBe("old y");
      expect(fs.readFileSync(paths[2] as string, "utf8")).toBe("old z");
      expect(tempResidue(A)).toEqual([]);
    });
  });
});

// ---------------------------------------------------------------------------------------------

describe.skipIf(!has("prlimit"))("open descriptors stay bounded (prlimit --nofile=64, in a child)", () => {
  const LIMIT = ["prlimit", "--nofile=64", "--"];
  const FILES = 300;

  test(`the limit is real: the same child cannot hold ${FILES} files open at once`, () => {
    const dir = tempDir("fds-");
    const script = `const fs = require("node:fs"); for (let i = 0; i < ${FILES}; i++) fs.openSync(${JSON.stringify(dir)} + "/f" + i, "w");`;
    const raw = spawnSync(LIMIT[0] as string, [...LIMIT.slice(1), BUN, "-e", script], { encoding: "utf8" });
    expect(raw.status).not.toBe(0);
    expect(raw.stderr).toContain("EMFILE");
  });

  test.each(VARIANTS.map((v) => [v.name, v] as const))(
    `%s writes a batch of ${FILES} files, with each kind of temp`,
    (_name, v) => {
      // On a tmpfs where possible: its fsyncs cost nothing, and they are not what this test is about.
      const dirs = TEMP_KINDS.map(() => (isRoot ? mountTmpfs(4096) : tempDir("fds-")));
      const requests = TEMP_KINDS.map(({ env }, k) => ({
        fn: v.name,
        entries: Array.from({ length: FILES }, (_, i) => ({
          path: join(dirs[k] as string, `f${i}`),
          data: `file ${i}`,
        })),
        tmpfile: env,
      }));
      expect(batchesInChild(requests, LIMIT)).toEqual(TEMP_KINDS.map(() => ({ ok: true })));
      for (const [k, dir] of dirs.entries()) {
        const entries = requests[k]?.entries ?? [];
        expect(entries.filter((entry, i) => fs.readFileSync(entry.path, "utf8") !== `file ${i}`)).toEqual([]);
        expect(tempResidue(dir)).toEqual([]);
      }
    },
  );
});

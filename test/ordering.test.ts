/**
 * In-process ordering (SPEC "Beyond the seed"): async writes to one resolved file settle in call
 * order and the file ends with the last call's data, however the path reaches the file. Calls
 * rejected for bad arguments take no place in that order; sync writes never wait. And a large async
 * write leaves the event loop free to run other work between its pieces.
 */
import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  atomicWriteBytesAsync,
  atomicWriteManyAsync,
  atomicWriteStream,
  atomicWriteText,
  atomicWriteTextAsync,
} from "../index.ts";
import {
  BUN,
  childRequest,
  cleanup,
  has,
  injecting,
  isRoot,
  mountTmpfs,
  NOBODY,
  ROOT,
  ROOT_ONLY,
  TEMP_KINDS,
  TIMEOUT_MS,
  tempDir,
  tempResidue,
  useTempKind,
  writeInChild,
} from "./helpers.ts";

setDefaultTimeout(TIMEOUT_MS);
afterAll(cleanup);

const KIB = 1024;

/** Call `index`'s data: its number first, and every seventh large enough to go to the thread pool. */
function dataOf(index: number): string {
  const size = index % 7 === 0 ? 70 * KIB + index : 20 + (index % 300);
  const head = `#${index}#`;
  return head + "abcdefghijklmnopqrstuvwxyz".repeat(Math.ceil(size / 26)).slice(0, size - head.length);
}

/**
 * Starts call `index` as text, bytes, a stream (that waits between chunks) or a batch, the kinds
 * rotating so neighbouring calls take different routes and different times through the library.
 */
function startWrite(index: number, path: string, side: string): Promise<void> {
  const data = dataOf(index);
  const durable = index % 25 === 0; // some flush (slow, on the pool), most do not
  switch (index % 4) {
    case 0:
      return atomicWriteTextAsync(path, data, { durable });
    case 1:
      return atomicWriteBytesAsync(path, Buffer.from(data), { durable });
    case 2: {
      const third = Math.ceil(data.length / 3);
      async function* source() {
        for (let at = 0; at < data.length; at += third) {
          await Bun.sleep(0);
          yield data.slice(at, at + third);
        }
      }
      return atomicWriteStream(path, source(), { durable });
    }
    default:
      return atomicWriteManyAsync(
        [
          { path, data },
          { path: side, data: Buffer.from(data) },
        ],
        { durable },
      );
  }
}

interface Outcome {
  /** Call numbers in the order their promises settled. */
  settled: number[];
  /** Calls whose file did not hold their own data when they settled (a later call landed first). */
  overtaken: number[];
  failures: unknown[];
}

/** Starts `count` overlapping writes, call i to `paths[i % paths.length]`, all reaching `file`. */
async function overlappingWrites(count: number, paths: string[], file: string, side: string): Promise<Outcome> {
  const outcome: Outcome = { settled: [], overtaken: [], failures: [] };
  const calls: Promise<void>[] = [];
  for (let index = 0; index < count; index++) {
    const call = startWrite(index, paths[index % paths.length] as string, side);
    calls.push(
      call.then(
        () => {
          outcome.settled.push(index);
          // Call i+1 starts only now, so the file must still hold exactly call i's data.
          if (fs.readFileSync(file, "utf8") !== dataOf(index)) outcome.overtaken.push(index);
        },
        (error) => {
          outcome.settled.push(index);
          outcome.failures.push(error);
        },
      ),
    );
  }
  await Promise.all(calls);
  return outcome;
}

const inCallOrder = (count: number) => Array.from({ length: count }, (_, index) => index);

describe.each(TEMP_KINDS)("async writes to one file, with $name,", ({ env }) => {
  useTempKind(env);

  test("1,000 overlapping writes to one path settle in call order and leave the last call's data", async () => {
    const dir = tempDir("order-");
    const file = join(dir, "file.txt");
    fs.writeFileSync(file, "before");
    const outcome = await overlappingWrites(1000, [file], file, join(dir, "side"));
    expect(outcome.failures).toEqual([]);
    expect(outcome.settled).toEqual(inCallOrder(1000));
    expect(outcome.overtaken).toEqual([]);
    expect(fs.readFileSync(file, "utf8")).toBe(dataOf(999));
    expect(tempResidue(dir)).toEqual([]);
  });
});

// The order key does not depend on the temp protocol: these run once, with the default one.
describe("async writes to one file reached by different paths", () => {
  test("1,000 overlapping writes through two different symlinks to one file settle in call order", async () => {
    const dir = tempDir("order-links-");
    const file = join(dir, "file.txt");
    fs.writeFileSync(file, "before");
    const relative = join(dir, "relative-link");
    const absolute = join(dir, "absolute-link");
    fs.symlinkSync("file.txt", relative);
    fs.symlinkSync(file, absolute);
    const outcome = await overlappingWrites(1000, [relative, absolute], file, join(dir, "side"));
    expect(outcome.failures).toEqual([]);
    expect(outcome.settled).toEqual(inCallOrder(1000));
    expect(outcome.overtaken).toEqual([]);
    expect(fs.readFileSync(file, "utf8")).toBe(dataOf(999));
    expect(fs.readlinkSync(relative)).toBe("file.txt");
    expect(fs.readlinkSync(absolute)).toBe(file);
    expect(tempResidue(dir)).toEqual([]);
  });

  test("1,000 overlapping writes through a symlinked directory and a link in it settle in call order", async () => {
    const dir = tempDir("order-dirs-");
    const real = join(dir, "real");
    fs.mkdirSync(real);
    const file = join(real, "file.txt");
    fs.writeFileSync(file, "before");
    fs.symlinkSync("file.txt", join(real, "link"));
    const elsewhere = tempDir("order-dirlink-");
    const viaDirectory = join(elsewhere, "to-real");
    fs.symlinkSync(real, viaDirectory);
    const paths = [file, join(viaDirectory, "file.txt"), join(viaDirectory, "link"), `${real}/./file.txt`];
    const outcome = await overlappingWrites(1000, paths, file, join(dir, "side"));
    expect(outcome.failures).toEqual([]);
    expect(outcome.settled).toEqual(inCallOrder(1000));
    expect(outcome.overtaken).toEqual([]);
    expect(fs.readFileSync(file, "utf8")).toBe(dataOf(999));
    expect(fs.lstatSync(join(real, "link")).isSymbolicLink()).toBe(true);
    expect(tempResidue(real)).toEqual([]);
  });
});

describe("async writes queued before their directory exists", () => {
  test("settle in call order with writes to the same file made once it exists, through a symlinked directory", async () => {
    const dir = tempDir("order-later-");
    const real = join(dir, "real");
    fs.mkdirSync(real);
    fs.symlinkSync(real, join(dir, "link"));
    const held = join(real, "held");
    const viaLink = join(dir, "link", "sub", "file"); // sub does not exist yet
    const settled: string[] = [];
    async function* slow() {
      await Bun.sleep(100);
      yield "held";
    }
    // The first call holds up the second (a batch touching `held` too) until its slow source ends.
    const first = atomicWriteStream(held, slow()).then(() => settled.push("first"));
    const second = atomicWriteManyAsync([
      { path: held, data: "batch" },
      { path: viaLink, data: "second" },
    ]).then(() => settled.push("second"));
    fs.mkdirSync(join(real, "sub"));
    const third = atomicWriteTextAsync(join(real, "sub", "file"), "third").then(() => settled.push("third"));
    await Promise.all([first, second, third]);
    expect(settled).toEqual(["first", "second", "third"]);
    expect(fs.readFileSync(join(real, "sub", "file"), "utf8")).toBe("third");
    expect(tempResidue(join(real, "sub"))).toEqual([]);
  });
});

describe("ordering around calls that are not queued", () => {
  test("a call rejected for bad arguments takes no place in the order and holds up no one", async () => {
    const dir = tempDir("order-bad-");
    const file = join(dir, "file.txt");
    fs.writeFileSync(file, "before");
    // Each is wrong before anything touches the disk; plain JS callers can pass all of them.
    // biome-ignore lint/suspicious/noExplicitAny: deliberately ill-typed arguments
    const loose = (fn: unknown) => fn as (...args: any[]) => Promise<void>;
    const badCalls: (() => Promise<void>)[] = [
      () => loose(atomicWriteTextAsync)(file, 42),
      () => loose(atomicWriteBytesAsync)(file, "not bytes"),
      () => atomicWriteTextAsync(file, "x", { mode: 0o10000 }),
      () => loose(atomicWriteTextAsync)(file, "x", { encoding: "no-such-encoding" }),
      () => loose(atomicWriteStream)(file, 42),
      () => loose(atomicWriteBytesAsync)(file, Buffer.from("x"), { durable: "yes" }),
      () => loose(atomicWriteManyAsync)("not an array"),
    ];
    const events: string[] = [];
    const calls: Promise<unknown>[] = [];
    let lastGood = -1;
    let badCount = 0;
    for (let index = 0; index < 301; index++) {
      // Every fifth call is bad, and so is the very last one.
      const bad = index % 5 === 4 || index === 300;
      if (bad) badCount++;
      else lastGood = index;
      const call = bad
        ? (badCalls[index % badCalls.length] as () => Promise<void>)()
        : startWrite(index, file, join(dir, "side"));
      calls.push(
        call.then(
          () => events.push(`${bad ? "bad" : "good"} ${index} fulfilled`),
          (error: Error) => events.push(`${bad ? "bad" : "good"} ${index} ${error.name}`),
        ),
      );
    }
    await Promise.all(calls);
    const badOnes = events.slice(0, badCount);
    const goodOnes = events.slice(badCount);
    // Bad calls reject at once, before the first good write (which waits for the disk) settles.
    expect(badOnes.every((event) => /^bad \d+ (TypeError|RangeError)$/.test(event))).toBe(true);
    const goods = inCallOrder(301).filter((index) => !(index % 5 === 4 || index === 300));
    expect(goodOnes).toEqual(goods.map((index) => `good ${index} fulfilled`));
    expect(fs.readFileSync(file, "utf8")).toBe(dataOf(lastGood));
  });

  test("a sync write runs at once, without waiting for pending async writes", async () => {
    const dir = tempDir("order-sync-");
    const file = join(dir, "file.txt");
    fs.writeFileSync(file, "before");
    const settled: number[] = [];
    const calls = inCallOrder(60).map((index) =>
      startWrite(index, file, join(dir, "side")).then(() => {
        settled.push(index);
      }),
    );
    await calls[9]; // ten async writes done, fifty still queued: the sync write lands among them
    atomicWriteText(file, "written synchronously");
    expect(fs.readFileSync(file, "utf8")).toBe("written synchronously");
    expect(settled.length).toBeLessThan(60);
    await Promise.all(calls);
    expect(settled).toEqual(inCallOrder(60));
    expect(fs.readFileSync(file, "utf8")).toBe(dataOf(59));
    expect(tempResidue(dir)).toEqual([]);
  });
});

describe("ordering around writes that fail or that settle before the next call", () => {
  test("a queued write that fails holds up no one: the call after it still runs, in its turn", async () => {
    const dir = tempDir("order-failed-");
    const file = join(dir, "file.txt");
    fs.writeFileSync(file, "before");
    const broken = new Error("the source broke");
    async function* failing() {
      yield "partial";
      throw broken;
    }
    const settled: string[] = [];
    const note = (name: string) =>
      [
        () => settled.push(`${name} fulfilled`),
        (error: unknown) => settled.push(`${name} ${error === broken ? "broken" : String(error)}`),
      ] as const;
    await Promise.all([
      atomicWriteTextAsync(file, "first").then(...note("first")),
      atomicWriteStream(file, failing()).then(...note("failing")),
      atomicWriteTextAsync(file, "last").then(...note("last")),
    ]);
    expect(settled).toEqual(["first fulfilled", "failing broken", "last fulfilled"]);
    expect(fs.readFileSync(file, "utf8")).toBe("last");
    expect(tempResidue(dir)).toEqual([]);
  });

  test("a call made as an earlier write settles still waits for the writes queued behind that one", async () => {
    const dir = tempDir("order-settled-");
    const file = join(dir, "file.txt");
    fs.writeFileSync(file, "before");
    const slowly = (data: string, ms: number) =>
      (async function* () {
        await Bun.sleep(ms);
        yield data;
      })();
    const settled: string[] = [];
    const first = atomicWriteStream(file, slowly("first", 20)).then(() => settled.push("first"));
    const second = atomicWriteStream(file, slowly("second", 300)).then(() => settled.push("second"));
    // Called only once the first has settled, while the second is still reading its slow source.
    const third = first.then(() => atomicWriteTextAsync(file, "third")).then(() => settled.push("third"));
    await Promise.all([first, second, third]);
    expect(settled).toEqual(["first", "second", "third"]);
    expect(fs.readFileSync(file, "utf8")).toBe("third");
  });
});

describe("async writes to a relative path", () => {
  test("go where the working directory was at the call, though it changes before they run", async () => {
    const [callDir, laterDir] = [fs.realpathSync(tempDir("cwd-call-")), fs.realpathSync(tempDir("cwd-later-"))];
    fs.mkdirSync(join(callDir, "sub"));
    const home = process.cwd();
    process.chdir(callDir);
    try {
      const pending = [
        atomicWriteTextAsync("single", "single"),
        atomicWriteBytesAsync("sub/bytes", Buffer.from("bytes")),
        atomicWriteStream("stream", ["str", "eam"]),
        atomicWriteManyAsync([
          { path: "batch-a", data: "a" },
          { path: "./sub/batch-b", data: "b" },
        ]),
      ];
      process.chdir(laterDir);
      await Promise.all(pending); // here, so that a write going astray lands in laterDir, not in home
    } finally {
      process.chdir(home);
    }
    expect(fs.readdirSync(laterDir)).toEqual([]);
    const read = (name: string) => fs.readFileSync(join(callDir, name), "utf8");
    expect([read("single"), read("sub/bytes"), read("stream"), read("batch-a"), read("sub/batch-b")]).toEqual([
      "single",
      "bytes",
      "stream",
      "a",
      "b",
    ]);
  });
});

describe("relative paths, when the working directory is out of the ordinary", () => {
  const FUNCTIONS = ["atomicWriteText", "atomicWriteTextAsync", "atomicWriteBytesAsync", "atomicWriteStream"] as const;
  /** Prefixes a child's command so that it starts in `dir` (and removes it first, with `remove`). */
  const startIn = (dir: string, remove = false) => [
    "sh",
    "-c",
    `cd "$0" && ${remove ? 'rmdir "$0" && ' : ""}exec "$@"`,
    dir,
  ];

  test.skipIf(!isRoot).each(FUNCTIONS)(
    `%s needs no search permission on the ancestors of the working directory, as open(2) does not (${ROOT_ONLY})`,
    (fn) => {
      // A daemon started in /root/app that then dropped its privileges: its own directory is open
      // to it, the directories above it are not.
      const ancestor = tempDir("cwd-closed-");
      const inner = join(ancestor, "inner");
      fs.mkdirSync(inner, { mode: 0o777 });
      fs.chmodSync(inner, 0o777);
      fs.chmodSync(ancestor, 0o700);
      const result = writeInChild(childRequest(fn, "file", "new"), { user: NOBODY, wrap: startIn(inner) });
      expect(result.raw.stderr).toBe("");
      expect(result).toMatchObject({ ok: true });
      expect(fs.readFileSync(join(inner, "file"), "utf8")).toBe("new");
      expect(fs.readdirSync(inner)).toEqual(["file"]);
    },
  );

  test.each(FUNCTIONS)("%s writes in a working directory whose path is near PATH_MAX, as open(2) does", (fn) => {
    let deep = tempDir("cwd-deep-");
    while (Buffer.byteLength(deep) < 4080) deep = join(deep, "d".repeat(Math.min(200, 4080 - deep.length)));
    fs.mkdirSync(deep, { recursive: true });
    const result = writeInChild(childRequest(fn, "file", "new"), { wrap: startIn(deep) });
    expect(result).toMatchObject({ ok: true });
    expect(fs.readFileSync(join(deep, "file"), "utf8")).toBe("new");
    expect(fs.readdirSync(deep)).toEqual(["file"]);
  });

  describe.each(TEMP_KINDS)("with $name", ({ env }) => {
    test.each(FUNCTIONS)("%s fails with ENOENT naming the path when the working directory was removed", (fn) => {
      const gone = join(tempDir("cwd-gone-"), "removed");
      fs.mkdirSync(gone);
      const result = writeInChild(childRequest(fn, "file", "new"), {
        wrap: startIn(gone, true),
        env: env === undefined ? {} : { ATOMIC_WRITE_TMPFILE: env },
      });
      expect([result.ok, result.code]).toEqual([false, "ENOENT"]);
      expect(result.message).toContain("'file'");
      expect(fs.existsSync(gone)).toBe(false);
    });
  });
});

describe("async writes to different files at once", () => {
  test("each keeps its own bytes when large texts and large string chunks are encoded side by side", async () => {
    const dir = tempDir("order-side-");
    // Above the library's 256 Ki-unit encoding piece, so each is encoded piecewise into a buffer.
    const text = (seed: string) => `${seed}é`.repeat(700 * KIB);
    const chunks = (seed: string) => [text(`${seed}1`), text(`${seed}2`), text(`${seed}3`)];
    const writes: [string, string, Promise<void>][] = [];
    for (const seed of ["a", "b"]) {
      const path = join(dir, `text-${seed}`);
      writes.push([path, text(seed), atomicWriteTextAsync(path, text(seed))]);
    }
    for (const seed of ["c", "d"]) {
      const path = join(dir, `stream-${seed}`);
      async function* source() {
        for (const chunk of chunks(seed)) yield chunk;
      }
      writes.push([path, chunks(seed).join(""), atomicWriteStream(path, source())]);
    }
    await Promise.all(writes.map(([, , write]) => write));
    for (const [path, expected] of writes) {
      const bytes = fs.readFileSync(path);
      expect([path, bytes.length, bytes.equals(Buffer.from(expected))]).toEqual([
        path,
        Buffer.byteLength(expected),
        true,
      ]);
    }
  });
});

describe("async writes of small texts at once", () => {
  test("each keeps its own bytes, single writes and batches alike, when encoding buffers are reused", async () => {
    const dir = tempDir("order-small-");
    // Distinct at every offset, so text encoded over another write's shows.
    const text = (seed: string, length: number) => {
      let out = "";
      for (let i = 0; out.length < length; i++) out += `${seed}${i}é€`;
      return out.slice(0, length);
    };
    // Three rounds: the later ones reuse the buffers the earlier ones gave back.
    for (const round of [1, 2, 3]) {
      const expected = new Map<string, Buffer>();
      const writes: Promise<void>[] = [];
      for (const [index, length] of [100, 4 * KIB, 30 * KIB, 7, 2 * KIB, 20 * KIB].entries()) {
        const encoding = index % 2 === 0 ? "utf-8" : "utf16le";
        const path = join(dir, `single-${index}`);
        const data = text(`r${round}s${index}-`, length);
        expected.set(path, Buffer.from(data, encoding));
        writes.push(atomicWriteTextAsync(path, data, { encoding }));
      }
      for (const batch of [0, 1]) {
        const entries = [300, 5 * KIB, 1].map((length, index) => {
          const path = join(dir, `batch-${batch}-${index}`);
          const data = text(`r${round}b${batch}e${index}-`, length);
          expected.set(path, Buffer.from(data));
          return { path, data };
        });
        writes.push(atomicWriteManyAsync(entries));
      }
      await Promise.all(writes);
      for (const [path, bytes] of expected) {
        expect([round, path, fs.readFileSync(path).equals(bytes)]).toEqual([round, path, true]);
      }
    }
  });
});

/** Whether temp dirs are on tmpfs, where an fsync waits on nothing and so is made inline, on purpose. */
const tempsInMemory = fs.statfsSync(tmpdir()).type === 0x01021994;

/** How long strace holds each fsync and fdatasync below: an event loop that made one would stall this long. */
const FSYNC_DELAY_MS = 500;

describe.skipIf(!has("strace") || tempsInMemory)(
  `an async write waiting on fsync (each fsync delayed ${FSYNC_DELAY_MS} ms by strace, in a child; not where temp dirs are on tmpfs, whose fsyncs are inline)`,
  () => {
    test("leaves the event loop free meanwhile: neither the temp's fsync nor the directory's runs on the main thread", () => {
      const dir = tempDir("order-fsync-");
      const file = join(dir, "file.txt");
      // The longest wait between two turns of a 10 ms timer: a flush made on the main thread holds
      // the timer for the whole delay, so it is at least FSYNC_DELAY_MS, however fast the machine.
      // A free loop waits only as long as the scheduler makes it (up to ~140 ms measured on a loaded
      // 2-core machine), so the bound fails on the bug for sure and not on a slow or busy machine.
      const script = `
      const { atomicWriteTextAsync } = await import(${JSON.stringify(join(ROOT, "index.ts"))});
      let ticks = 0;
      let last = performance.now();
      let longestWait = 0;
      const turn = () => {
        const now = performance.now();
        longestWait = Math.max(longestWait, now - last);
        last = now;
      };
      const timer = setInterval(() => { ticks++; turn(); }, 10);
      const started = last;
      await atomicWriteTextAsync(${JSON.stringify(file)}, "flushed off the event loop");
      clearInterval(timer);
      turn();
      console.log(JSON.stringify({ ticks, ms: performance.now() - started, longestWait }));
    `;
      const delay = injecting("fsync,fdatasync", `delay_enter=${FSYNC_DELAY_MS * 1000}`);
      const result = spawnSync(delay[0] as string, [...delay.slice(1), BUN, "-e", script], { encoding: "utf8" });
      expect([result.status, result.stderr]).toEqual([0, ""]);
      const { ticks, ms, longestWait } = JSON.parse(result.stdout.trim()) as Record<string, number>;
      expect(fs.readFileSync(file, "utf8")).toBe("flushed off the event loop");
      expect(ms).toBeGreaterThan(2 * FSYNC_DELAY_MS - 50); // the temp's fsync and the directory's: the delay was real
      expect(longestWait).toBeLessThan(FSYNC_DELAY_MS);
      expect(ticks).toBeGreaterThan(15); // and the timer did run meanwhile, dozens of times in ~1 s
    });
  },
);

describe.skipIf(!isRoot)("async writes to a file system in memory (needs root to mount a tmpfs)", () => {
  test("let the event loop run other work while a large write proceeds", async () => {
    const dir = mountTmpfs(512 * KIB);
    const path = join(dir, "large");
    const text = "x".repeat(128 * KIB * KIB);
    let ticks = 0;
    const timer = setInterval(() => ticks++, 0);
    try {
      await atomicWriteTextAsync(path, text);
    } finally {
      clearInterval(timer);
    }
    expect(fs.statSync(path).size).toBe(text.length);
    // On tmpfs the pieces are written on the event loop's own thread; after each large one the
    // loop gets a turn, as it did while the thread pool wrote (about 170 pieces here).
    expect(ticks).toBeGreaterThan(5);
  });
});

/**
 * The protocol on real file systems other than the one /tmp happens to be on, loop-mounted from
 * image files. btrfs is the one SPEC singles out: it may not persist an fsync of a file that had no
 * name yet, so an anonymous temp must be flushed again once linkat has named it, before the rename.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import * as fs from "node:fs";
import { join } from "node:path";
import {
  type ChildWrite,
  canMount,
  childRequest,
  cleanup,
  has,
  modeOf,
  mountImage,
  ROOT_ONLY,
  TIMEOUT_MS,
  tempDir,
  tempResidue,
  tracedWrite,
} from "./helpers.ts";

setDefaultTimeout(TIMEOUT_MS);
afterAll(cleanup);

const CALLS = "fsync,fdatasync,linkat,rename,renameat,renameat2";
const FLUSH = /\b(fsync|fdatasync)\(/;
/** A descriptor of a temp, as `strace -y` shows it: an anonymous inode (even once linked), or a named temp. */
const TEMP_FD = /#\d+>\(deleted\)|\.tmp>/;
const WRITERS: ChildWrite["fn"][] = ["atomicWriteBytes", "atomicWriteTextAsync", "atomicWriteStream"];

/** An existing target with a mode of its own, so keeping it is checked too. */
function existing(dir: string, name: string): string {
  const file = join(dir, name);
  fs.writeFileSync(file, "old contents");
  fs.chmodSync(file, 0o640);
  return file;
}

/** The traced calls from the temp's naming (linkat) up to its rename over `file`. */
function namingToRename(trace: string[], file: string): { named: boolean; between: string[]; renamed: boolean } {
  const link = trace.findIndex((line) => /\blinkat\(/.test(line) && /\.tmp"/.test(line));
  const rename = trace.findIndex((line) => /\brename(at2?)?\(/.test(line) && line.includes(`"${file}"`));
  return { named: link !== -1, between: link === -1 ? [] : trace.slice(link + 1, rename), renamed: rename > link };
}

const btrfs = canMount("btrfs") && has("strace");

describe.skipIf(!btrfs)(`on btrfs (${ROOT_ONLY}, mkfs.btrfs and strace)`, () => {
  let dir: string;
  beforeAll(() => {
    dir = mountImage("btrfs", 256);
  });

  for (const fn of WRITERS) {
    test(`${fn} flushes an anonymous temp again once linkat has named it, before the rename`, () => {
      const file = existing(dir, `${fn}.json`);
      const trace = tracedWrite(childRequest(fn, file, "new contents"), CALLS);
      const { named, between, renamed } = namingToRename(trace, file);
      expect(named).toBe(true);
      expect(renamed).toBe(true);
      // A flush of the temp's descriptor, not of the directory's.
      expect(between.filter((line) => FLUSH.test(line) && TEMP_FD.test(line)).length).toBe(1);
      expect(fs.readFileSync(file, "utf8")).toBe("new contents");
      expect(modeOf(file)).toBe(0o640);
      expect(tempResidue(dir)).toEqual([]);
    });
  }

  test("a write with durable: false flushes nothing, on btrfs too", () => {
    const file = existing(dir, "cache.bin");
    const trace = tracedWrite(childRequest("atomicWriteBytes", file, "cached", { durable: false }), CALLS);
    expect(trace.filter((line) => FLUSH.test(line))).toEqual([]);
    expect(namingToRename(trace, file).renamed).toBe(true);
    expect(fs.readFileSync(file, "utf8")).toBe("cached");
  });

  test("a named temp (ATOMIC_WRITE_TMPFILE=0) needs no linkat: it is flushed once, under its name", () => {
    const file = existing(dir, "named.json");
    const trace = tracedWrite(childRequest("atomicWriteBytes", file, "named"), CALLS, { ATOMIC_WRITE_TMPFILE: "0" });
    expect(trace.filter((line) => /\blinkat\(/.test(line))).toEqual([]);
    expect(trace.filter((line) => FLUSH.test(line) && TEMP_FD.test(line)).length).toBe(1);
    expect(fs.readFileSync(file, "utf8")).toBe("named");
    expect(tempResidue(dir)).toEqual([]);
  });
});

describe.skipIf(!has("strace"))("on a file system other than btrfs", () => {
  test("an anonymous temp is flushed once, before linkat names it (the extra flush is btrfs's alone)", () => {
    const dir = tempDir("not-btrfs-");
    const file = existing(dir, "file.json");
    const trace = tracedWrite(childRequest("atomicWriteBytes", file, "new contents"), CALLS);
    const { named, between, renamed } = namingToRename(trace, file);
    expect(named).toBe(true);
    expect(renamed).toBe(true);
    expect(between.filter((line) => FLUSH.test(line))).toEqual([]);
    expect(trace.filter((line) => FLUSH.test(line) && TEMP_FD.test(line)).length).toBe(1);
    expect(fs.readFileSync(file, "utf8")).toBe("new contents");
  });
});

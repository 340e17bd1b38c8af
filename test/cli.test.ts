/**
 * The command line, through the compiled binary users actually run: bytes in, bytes out; modes;
 * --help and --version; usage errors (exit 2); failures (exit 1) that leave everything as it was;
 * a failed directory fsync (exit 3) produced by a real injected EIO; a 1 GiB pipe in bounded
 * memory; and a syscall trace proving the durability order (temp fsync, rename, directory fsync).
 */

import { dlopen, FFIType } from "bun:ffi";
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { type SpawnSyncReturns, spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import { dirname, join, resolve } from "node:path";
import { version } from "../package.json";
import {
  asUser,
  BUN,
  cleanup,
  compileCli,
  fdFile,
  fillDisk,
  has,
  isRoot,
  modeOf,
  mountTmpfs,
  NOBODY,
  parseTrace,
  ROOT,
  remount,
  type Syscall,
  snapshot,
  TIMEOUT_MS,
  tempDir,
  tempResidue,
} from "./helpers.ts";

let binary: string;

setDefaultTimeout(TIMEOUT_MS); // before the hook below, which takes it too
beforeAll(() => {
  binary = compileCli();
});

afterAll(cleanup);

interface CliOptions {
  /** Prefix the command, e.g. with strace. */
  wrap?: string[];
  /** Run as this uid (and gid), without supplementary groups. */
  user?: number;
  /** The umask the binary starts with. */
  umask?: number;
  env?: Record<string, string>;
  cwd?: string;
}

/** Runs the binary with `input` on stdin. The umask is set by a shell that then execs the binary. */
function cli(args: string[], input: string | Uint8Array = "", how: CliOptions = {}): SpawnSyncReturns<string> {
  const umask = (how.umask ?? 0o022).toString(8).padStart(4, "0");
  const argv = [
    ...(how.wrap ?? []),
    ...asUser(how.user),
    "sh",
    "-c",
    `umask ${umask}; exec "$0" "$@"`,
    binary,
    ...args,
  ];
  return spawnSync(argv[0] as string, argv.slice(1), {
    input,
    encoding: "utf8",
    maxBuffer: 64 * 1024 * 1024,
    cwd: how.cwd,
    env: { ...process.env, ...how.env },
  });
}

function lines(text: string): string[] {
  return text.split("\n").filter((line, index, all) => line !== "" || index < all.length - 1);
}

/** A fresh directory holding `target` with `content`, at `mode`. */
function withTarget(content: string | Uint8Array = "old content\n", mode = 0o644): { dir: string; target: string } {
  const dir = fs.realpathSync(tempDir("cli-"));
  const target = join(dir, "target");
  fs.writeFileSync(target, content);
  fs.chmodSync(target, mode);
  return { dir, target };
}

// ---------------------------------------------------------------------------------------------

describe("atomic-write writes standard input to the path", () => {
  test("writes every one of the 256 byte values, repeated, exactly as read", () => {
    const { target } = withTarget();
    const every = Buffer.from(Array.from({ length: 256 }, (_, byte) => byte));
    const payload = Buffer.concat(Array.from({ length: 4099 }, () => every));
    const result = cli([target], payload);
    expect(result.stderr).toBe("");
    expect(result.status).toBe(0);
    expect(fs.readFileSync(target).equals(payload)).toBe(true);
  });

  test("writes a multi-MiB random payload byte for byte, across the binary's read chunks", () => {
    const { dir, target } = withTarget();
    const payload = randomBytes(5 * 1024 * 1024 + 12345);
    const result = cli([target], payload);
    expect(result.stderr).toBe("");
    expect(result.status).toBe(0);
    expect(fs.readFileSync(target).equals(payload)).toBe(true);
    expect(tempResidue(dir)).toEqual([]);
  });

  // spawnSync's `input` reaches the child as a file (a memfd), whose reads never come up short: a
  // shell pipeline gives the binary a real pipe, which hands over at most 64 KiB a read.
  test("writes a real pipe byte for byte, its input arriving in many short reads", () => {
    const { dir, target } = withTarget();
    const source = join(tempDir("cli-src-"), "payload");
    const payload = randomBytes(3 * 1024 * 1024 + 777);
    fs.writeFileSync(source, payload);
    const result = spawnSync("sh", ["-c", 'cat "$1" | "$0" "$2"', binary, source, target], { encoding: "utf8" });
    expect([result.status, result.stderr]).toEqual([0, ""]);
    expect(fs.readFileSync(target).equals(payload)).toBe(true);
    expect(tempResidue(dir)).toEqual([]);
  });

  test.skipIf(process.platform !== "linux" || !has("mkfifo"))(
    "waits for a non-blocking standard input that has nothing yet, instead of failing",
    async () => {
      const { dir, target } = withTarget();
      const fifo = join(tempDir("cli-fifo-"), "stdin");
      expect(spawnSync("mkfifo", [fifo]).status).toBe(0);
      const reader = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
      const writer = fs.openSync(fifo, fs.constants.O_WRONLY);
      const child = Bun.spawn([binary, target], { stdin: reader, stdout: "pipe", stderr: "pipe" });
      // Bun clears O_NONBLOCK on the descriptors it hands a child (other parents need not):
      // set it again. It is a flag of the open file, which the child shares, so its stdin has it too.
      const { symbols } = dlopen("libc.so.6", {
        fcntl: { args: [FFIType.i32, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
      });
      const [F_GETFL, F_SETFL] = [3, 4];
      expect(symbols.fcntl(reader, F_SETFL, symbols.fcntl(reader, F_GETFL, 0) | fs.constants.O_NONBLOCK)).toBe(0);
      fs.closeSync(reader);
      try {
        // Not a fixed sleep, which a slow start could outlast (the test then never saw an empty pipe):
        // the binary has opened its temp and read the empty pipe again and again, each read an EAGAIN.
        await emptyReads(child, () => openIn(child.pid, dir));
        fs.writeSync(writer, "first half, ");
        await emptyReads(child); // it took the first half and found the pipe empty again
        fs.writeSync(writer, "second half\n");
      } finally {
        fs.closeSync(writer);
      }
      const status = await child.exited;
      expect([status, await new Response(child.stderr).text()]).toEqual([0, ""]);
      expect(fs.readFileSync(target, "utf8")).toBe("first half, second half\n");
      expect(tempResidue(dir)).toEqual([]);
    },
  );

  test("creates an empty file from empty standard input", () => {
    const dir = tempDir("cli-");
    const target = join(dir, "new-empty");
    const result = cli([target], "");
    expect(result.status).toBe(0);
    expect(fs.statSync(target).isFile()).toBe(true);
    expect(fs.statSync(target).size).toBe(0);
    expect(fs.readdirSync(dir)).toEqual(["new-empty"]);
  });

  test("empties an existing file when standard input is empty", () => {
    const { dir, target } = withTarget("something to lose\n");
    const result = cli([target], "");
    expect(result.status).toBe(0);
    expect(fs.statSync(target).size).toBe(0);
    expect(fs.readdirSync(dir)).toEqual(["target"]);
  });

  test("treats everything after -- as the path, even a name starting with a dash", () => {
    const dir = tempDir("cli-");
    const result = cli(["--", "-dashed"], "dash\n", { cwd: dir });
    expect(result.status).toBe(0);
    expect(fs.readFileSync(join(dir, "-dashed"), "utf8")).toBe("dash\n");
  });

  test("does the same from source, where Bun takes the first -- after the script for its own", () => {
    const dir = tempDir("cli-");
    const script = join(ROOT, "cli.ts");
    for (const args of [
      ["--", "-dashed"],
      ["--mode", "600", "--", "-private"],
    ]) {
      const result = spawnSync(BUN, [script, ...args], { cwd: dir, input: "dash\n", encoding: "utf8" });
      expect([result.status, result.stderr]).toEqual([0, ""]);
    }
    expect(fs.readFileSync(join(dir, "-dashed"), "utf8")).toBe("dash\n");
    expect(modeOf(join(dir, "-private"))).toBe(0o600);
    const unknown = spawnSync(BUN, [script, "-dashed"], { cwd: dir, input: "x", encoding: "utf8" });
    expect(unknown.status).toBe(2); // without --, still an unknown option
  });

  test("from source too, a name after -- is a path even when it reads as --help or --version", () => {
    const dir = tempDir("cli-");
    const script = join(ROOT, "cli.ts");
    for (const name of ["--help", "-h", "--version", "-V"]) {
      const result = spawnSync(BUN, [script, "--", name], { cwd: dir, input: `${name}\n`, encoding: "utf8" });
      expect([result.status, result.stdout, result.stderr]).toEqual([0, "", ""]);
      expect(fs.readFileSync(join(dir, name), "utf8")).toBe(`${name}\n`);
    }
    // The form that also works where the arguments cannot be read as typed: -- for Bun, -- for the CLI.
    const doubled = spawnSync(BUN, [script, "--", "--", "-doubled"], { cwd: dir, input: "x", encoding: "utf8" });
    expect([doubled.status, doubled.stderr]).toEqual([0, ""]);
    expect(fs.readFileSync(join(dir, "-doubled"), "utf8")).toBe("x");
  });

  test("refuses a path that is not valid UTF-8 (exit 2), rather than write a file of another name", () => {
    const dir = fs.realpathSync(tempDir("cli-"));
    // Raw bytes through the shell: "lat" and 0xE9 (Latin-1 é), which Bun would read as U+FFFD.
    const raw = (command: string, input = "") =>
      spawnSync("sh", ["-c", command, dir, binary, join(ROOT, "cli.ts"), BUN], { input, encoding: "utf8" });
    expect(raw('printf old > "$0/$(printf "lat\\351")"').status).toBe(0);
    const names = () => fs.readdirSync(dir, { encoding: "buffer" }).map((name) => name.toString("hex"));
    expect(names()).toEqual(["6c6174e9"]);
    for (const command of ['exec "$1" "$0/$(printf "lat\\351")"', 'exec "$3" "$2" "$0/$(printf "lat\\351")"']) {
      const result = raw(command, "new\n");
      expect(result.status).toBe(2);
      const errors = lines(result.stderr);
      expect(errors).toHaveLength(1);
      expect(errors[0]).toContain("not valid UTF-8");
      expect(names()).toEqual(["6c6174e9"]);
      expect(raw('cat "$0/$(printf "lat\\351")"').stdout).toBe("old");
    }
  });

  test("still writes a name that holds U+FFFD itself, which is valid UTF-8", () => {
    const dir = fs.realpathSync(tempDir("cli-"));
    const result = cli([join(dir, "lat\uFFFD")], "replacement\n");
    expect([result.status, result.stderr]).toEqual([0, ""]);
    expect(fs.readdirSync(dir, { encoding: "buffer" }).map((name) => name.toString("hex"))).toEqual(["6c6174efbfbd"]);
  });
});

describe("atomic-write sets the file's mode", () => {
  test.each([
    [["--mode", "666"], 0o077, 0o666],
    [["--mode=0640"], 0o000, 0o640],
    [["-m", "600"], 0o022, 0o600],
    [["--mode", "4755"], 0o077, 0o4755],
    [["--mode", "0o7777"], 0o777, 0o7777],
    [["--mode", "0"], 0o000, 0o000],
    [["--mode", "04755"], 0o022, 0o4755],
    [["--mode", "000644"], 0o022, 0o644],
  ] as const)("applies %p exactly, whatever the umask (%o)", (args, umask, expected) => {
    const { target } = withTarget("old\n", 0o604);
    const result = cli([...args, target], "moded\n", { umask });
    expect(result.stderr).toBe("");
    expect(result.status).toBe(0);
    expect(modeOf(target)).toBe(expected);
    expect(fs.readFileSync(target, "utf8")).toBe("moded\n");
  });

  test("keeps the existing file's mode when --mode is not given, whatever the umask", () => {
    const { target } = withTarget("old\n", 0o604);
    const result = cli([target], "new\n", { umask: 0o077 });
    expect(result.status).toBe(0);
    expect(modeOf(target)).toBe(0o604);
    expect(fs.readFileSync(target, "utf8")).toBe("new\n");
  });

  test("gives a new file the mode a plain create would (0666 less the umask) without --mode", () => {
    const dir = tempDir("cli-");
    const target = join(dir, "fresh");
    const result = cli([target], "fresh\n", { umask: 0o027 });
    expect(result.status).toBe(0);
    expect(modeOf(target)).toBe(0o640);
  });
});

describe("atomic-write --help and --version", () => {
  test.each([["--help"], ["-h"]])("%s prints the usage on stdout and exits 0", (flag) => {
    const result = cli([flag]);
    expect(result.status).toBe(0);
    expect(result.stdout).toStartWith("Usage: atomic-write [--mode OCTAL] <path>");
    expect(result.stdout).toContain("--mode OCTAL");
    expect(result.stderr).toBe("");
  });

  test.each([["--version"], ["-V"]])("%s prints the package.json version and exits 0", (flag) => {
    const result = cli([flag]);
    expect(result.status).toBe(0);
    expect(result.stdout).toBe(`atomic-write ${version}\n`);
    expect(result.stderr).toBe("");
  });

  test.each([["--help"], ["--version"]])(
    "%s exits 1 with one line on stderr when standard output cannot be written (a full device)",
    (flag) => {
      const full = fs.openSync("/dev/full", "w");
      try {
        const result = spawnSync(binary, [flag], { stdio: ["ignore", full, "pipe"], encoding: "utf8" });
        expect(result.status).toBe(1);
        expect(lines(result.stderr)).toEqual([
          expect.stringMatching(/^atomic-write: cannot write standard output: .*ENOSPC/),
        ]);
      } finally {
        fs.closeSync(full);
      }
    },
  );
});

describe("atomic-write usage errors exit 2 with one line on stderr and touch nothing", () => {
  test.each([
    ["no path", []],
    ["two paths", ["TARGET", "OTHER"]],
    ["mode '9' (not octal)", ["--mode", "9", "TARGET"]],
    ["mode '10000' (above 7777)", ["--mode", "10000", "TARGET"]],
    ["mode '017777' (above 7777 after its leading zero)", ["--mode", "017777", "TARGET"]],
    ["mode 'abc'", ["--mode", "abc", "TARGET"]],
    ["--mode without a value", ["TARGET", "--mode"]],
    ["an unknown option", ["--frobnicate", "TARGET"]],
    ["an empty path", [""]],
    ["an unknown option with a line break in it", ["--frob\nnicate", "TARGET"]],
  ] as const)("rejects %s", (_, template) => {
    const { dir, target } = withTarget("keep me\n", 0o640);
    const args = template.map((arg) => (arg === "TARGET" ? target : arg === "OTHER" ? join(dir, "other") : arg));
    const before = snapshot(dir);
    const result = cli(args, "must not be written\n");
    expect(result.status).toBe(2);
    expect(result.stdout).toBe("");
    const errors = lines(result.stderr);
    expect(errors).toHaveLength(1);
    expect(errors[0]).toStartWith("atomic-write: ");
    expect(snapshot(dir)).toEqual(before);
  });
});

// ---------------------------------------------------------------------------------------------

/** Exit 1, one stderr line naming the path and the code, and every watched directory as it was. */
function expectNothingWritten(
  result: SpawnSyncReturns<string>,
  path: string,
  code: RegExp,
  before: Record<string, ReturnType<typeof snapshot>>,
): void {
  const errors = lines(result.stderr);
  expect(errors).toHaveLength(1);
  expect(errors[0]).toContain(path);
  expect(errors[0]).toMatch(code);
  expect(result.status).toBe(1);
  for (const [dir, state] of Object.entries(before)) {
    expect(snapshot(dir)).toEqual(state);
    expect(tempResidue(dir)).toEqual([]);
  }
}

describe("atomic-write failures exit 1 with one line naming the path, and change nothing", () => {
  test("fails with ENOENT when the parent directory does not exist", () => {
    const { dir } = withTarget();
    const path = join(dir, "missing", "out");
    const before = { [dir]: snapshot(dir) };
    expectNothingWritten(cli([path], "data\n"), path, /ENOENT/, before);
  });

  test("fails with EISDIR when the path is an existing directory", () => {
    const { dir } = withTarget();
    const path = join(dir, "sub");
    fs.mkdirSync(path);
    fs.writeFileSync(join(path, "inside"), "inside\n");
    const before = { [dir]: snapshot(dir), [path]: snapshot(path) };
    expectNothingWritten(cli([path], "data\n"), path, /EISDIR/, before);
  });

  test("names a path holding a line break on one line, the break escaped", () => {
    const { dir } = withTarget();
    const path = join(dir, "missing\ndir", "out");
    const before = { [dir]: snapshot(dir) };
    const result = cli([path], "data\n");
    expectNothingWritten(result, JSON.stringify(path).slice(1, -1), /ENOENT/, before);
  });

  test("names the path when standard input cannot be read, even a name that occurs in the reason", () => {
    const { dir } = withTarget();
    fs.writeFileSync(join(dir, "t"), "old\n");
    const before = { [dir]: snapshot(dir) };
    const directory = fs.openSync(dir, "r"); // as standard input: every read fails with EISDIR
    try {
      const result = spawnSync(binary, ["t"], { cwd: dir, stdio: [directory, "pipe", "pipe"], encoding: "utf8" });
      expectNothingWritten(result, "'t'", /EISDIR/, before);
      expect(result.stderr).toContain("standard input");
    } finally {
      fs.closeSync(directory);
    }
  });

  test("fails with ENOTDIR when a parent component is a file", () => {
    const { dir, target } = withTarget();
    const path = join(target, "out");
    const before = { [dir]: snapshot(dir) };
    expectNothingWritten(cli([path], "data\n"), path, /ENOTDIR/, before);
  });

  test.skipIf(!isRoot)("fails with EACCES for a user who may not write the directory (needs root for setpriv)", () => {
    // The target itself is writable by everyone: only replacing it atomically needs the directory.
    const { dir, target } = withTarget("root's\n", 0o666);
    const before = { [dir]: snapshot(dir) };
    expectNothingWritten(cli([target], "nobody's\n", { user: NOBODY }), target, /EACCES/, before);
  });

  test.skipIf(!isRoot)("fails with EROFS on a read-only file system (needs root to mount)", () => {
    const mount = mountTmpfs(1024);
    const target = join(mount, "target");
    fs.writeFileSync(target, "frozen\n");
    remount(mount, "ro");
    const before = { [mount]: snapshot(mount) };
    expectNothingWritten(cli([target], "thawed\n"), target, /EROFS/, before);
  });

  test.skipIf(!isRoot)("fails with ENOSPC and keeps the target intact when the disk is full (needs root)", () => {
    const mount = mountTmpfs(512);
    const target = join(mount, "target");
    fs.writeFileSync(target, "fits\n");
    fillDisk(mount);
    const before = { [mount]: snapshot(mount) };
    expectNothingWritten(cli([target], randomBytes(256 * 1024)), target, /ENOSPC/, before);
  });
});

// ---------------------------------------------------------------------------------------------
// Traces. `strace -y` names each descriptor's file, so the order of the protocol can be read off.

/** Source and destination of a rename, renameat or renameat2, as absolute paths. */
function renamePaths(call: Syscall, cwd: string): [string, string] {
  const found = [...call.args.matchAll(/(?:(?:AT_FDCWD|\d+)<([^>]*)>, )?"([^"]*)"/g)].map((match) =>
    resolve(match[1] ?? cwd, match[2] as string),
  );
  return [found[0] as string, found[1] as string];
}

const SYNCS = new Set(["fsync", "fdatasync"]);
const RENAMES = new Set(["rename", "renameat", "renameat2"]);

/** Fails unless the trace shows: temp written, temp synced, temp renamed over the target, directory synced. */
function checkDurableOrder(calls: Syscall[], target: string, cwd: string): string {
  const dir = dirname(target);
  const replaced = calls.filter((c) => RENAMES.has(c.name) && c.result === "0" && renamePaths(c, cwd)[1] === target);
  expect(replaced).toHaveLength(1);
  const rename = replaced[0] as Syscall;
  const temp = renamePaths(rename, cwd)[0];
  expect(dirname(temp)).toBe(dir);
  expect(temp.slice(dir.length + 1)).toMatch(/^\..*\.tmp$/);

  // The renamed file is the temp under its name, or (O_TMPFILE) the unnamed inode now at the target.
  const inode = fs.statSync(target).ino;
  const isTemp = (file: string | undefined) => file === temp || file === `${dir}/#${inode} (deleted)`;
  const tempSyncs = calls.filter((c) => SYNCS.has(c.name) && c.result === "0" && isTemp(fdFile(c)));
  expect(tempSyncs.length).toBeGreaterThan(0);
  const lastTempSync = tempSyncs[tempSyncs.length - 1] as Syscall;
  expect(lastTempSync.end).toBeLessThan(rename.start);

  const writes = calls.filter((c) => c.name === "write" && isTemp(fdFile(c)));
  expect(writes.length).toBeGreaterThan(0);
  for (const write of writes) expect(write.end).toBeLessThan(lastTempSync.start);
  // Nothing is ever written to the target in place.
  expect(calls.filter((c) => c.name === "write" && fdFile(c) === target)).toEqual([]);

  const dirSyncs = calls.filter((c) => SYNCS.has(c.name) && c.result === "0" && fdFile(c) === dir);
  expect(dirSyncs.filter((c) => c.start > rename.end)).toHaveLength(1);
  return temp;
}

describe.skipIf(!has("strace"))("atomic-write under strace", () => {
  test.each([
    ["a named temp (ATOMIC_WRITE_TMPFILE=0)", "0"],
    ["the default temp strategy", undefined],
  ] as const)("fsyncs %s before renaming it over the target, and the directory after the rename", (_, tmpfile) => {
    const { dir, target } = withTarget("old\n");
    const log = join(tempDir("trace-"), "trace.log");
    const trace = [
      "strace",
      "-f",
      "-y",
      "-o",
      log,
      "-e",
      "trace=openat,write,fsync,fdatasync,rename,renameat,renameat2,linkat,close",
    ];
    const env: Record<string, string> = tmpfile === undefined ? {} : { ATOMIC_WRITE_TMPFILE: tmpfile };
    const payload = "durable payload\n".repeat(1000);
    const result = cli([target], payload, { wrap: trace, env, cwd: dir });
    expect(result.stderr).toBe("");
    expect(result.status).toBe(0);
    expect(fs.readFileSync(target, "utf8")).toBe(payload);
    checkDurableOrder(parseTrace(fs.readFileSync(log, "utf8")), target, dir);
    expect(fs.readdirSync(dir)).toEqual(["target"]);
  });

  test.each([
    ["a named temp (ATOMIC_WRITE_TMPFILE=0)", "0"],
    ["the default temp strategy", undefined],
  ] as const)(
    "exits 3 with the new content in place when only the directory fsync fails (real EIO), using %s",
    (_, tmpfile) => {
      const { dir, target } = withTarget("old\n", 0o640);
      const env: Record<string, string> = tmpfile === undefined ? {} : { ATOMIC_WRITE_TMPFILE: tmpfile };
      const log = join(tempDir("trace-"), "inject.log");
      // -P keeps the injection to calls on the directory itself: the temp's fsync must succeed.
      const inject = [
        "strace",
        "-f",
        "-y",
        "-o",
        log,
        "-P",
        dir,
        "-e",
        "trace=fsync,fdatasync",
        "-e",
        "inject=fsync,fdatasync:error=EIO",
      ];
      const result = cli([target], "new content\n", { wrap: inject, env });
      const errors = lines(result.stderr);
      expect(errors).toHaveLength(1);
      expect(errors[0]).toContain(target);
      expect(errors[0]).toContain("durability is unconfirmed");
      expect(errors[0]).toContain("EIO");
      expect(result.status).toBe(3);
      expect(fs.readFileSync(target, "utf8")).toBe("new content\n");
      expect(modeOf(target)).toBe(0o640);
      expect(fs.readdirSync(dir)).toEqual(["target"]);
      // The failure really came from the directory's fsync, and from nothing else.
      const injected = parseTrace(fs.readFileSync(log, "utf8")).filter((c) => c.result.includes("(INJECTED)"));
      expect(injected.map((c) => [c.name, fdFile(c)])).toEqual([["fsync", dir]]);
    },
  );
});

describe("atomic-write memory", () => {
  test.skipIf(!fs.existsSync("/usr/bin/time"))(
    "writes a 1 GiB pipe byte-exact in under 64 MiB peak RSS (GNU time around the binary alone)",
    () => {
      const dir = tempDir("big-");
      const target = join(dir, "one-gib");
      const size = 1024 * 1024 * 1024;
      try {
        const result = spawnSync(
          "sh",
          ["-c", `head -c ${size} /dev/zero | /usr/bin/time -f %M "$0" "$1"`, binary, target],
          { encoding: "utf8" },
        );
        expect(result.status).toBe(0);
        const report = lines(result.stderr);
        expect(report).toHaveLength(1);
        const peakKiB = Number(report[0]);
        console.log(`1 GiB through the binary: peak RSS ${(peakKiB / 1024).toFixed(1)} MiB`);
        expect(peakKiB).toBeGreaterThan(0);
        expect(peakKiB).toBeLessThan(64 * 1024);
        expect(fs.statSync(target).size).toBe(size);
        // Spot checks across the file: every byte of /dev/zero arrived as a zero.
        const fd = fs.openSync(target, "r");
        try {
          const probe = Buffer.alloc(1024 * 1024);
          for (const at of [0, size / 2 - 512 * 1024, size - probe.length]) {
            expect(fs.readSync(fd, probe, 0, probe.length, at)).toBe(probe.length);
            expect(probe.every((byte) => byte === 0)).toBe(true);
          }
        } finally {
          fs.closeSync(fd);
        }
        expect(fs.readdirSync(dir)).toEqual(["one-gib"]);
      } finally {
        fs.rmSync(target, { force: true });
      }
    },
    60_000,
  );
});

describe("atomic-write interrupted", () => {
  /**
   * A Ctrl-C (SIGINT) reaches the whole pipeline, and a build tool's SIGTERM may too: the program
   * upstream dies as well, and its pipe ends. The CLI must die at once rather than take that end for
   * the end of its input (a handler that only noted the signal published the 3 MiB read so far).
   * The child here has read 3 MiB (its temp holds the first of them) and waits in read(2) for more
   * when the signal comes; the test then closes the pipe, as the dying producer would.
   */
  const kinds: [string, string, string[]][] = [
    ["anonymous temps", "1", []],
    ["named temps (ATOMIC_WRITE_TMPFILE=0), whose .tmp stays", "0", [".tmp"]],
  ];
  test.each((["SIGINT", "SIGTERM"] as const).flatMap((signal) => kinds.map((kind) => [signal, ...kind] as const)))(
    "by %s, dies of it and leaves the target as it was, with %s",
    async (signal, _kind, tmpfile, residue) => {
      const { dir, target } = withTarget("old content\n", 0o640);
      const child = spawn(binary, [target], {
        stdio: ["pipe", "ignore", "ignore"],
        env: { ...process.env, ATOMIC_WRITE_TMPFILE: tmpfile },
      });
      const exited = new Promise<[number | null, string | null]>((done) => child.on("exit", (...end) => done(end)));
      await new Promise((written) => child.stdin.write(Buffer.alloc(3 * 1024 * 1024, "x"), written));
      const pid = child.pid as number;
      await waitFor(() => openIn(pid, dir) && fs.readFileSync(`/proc/${pid}/wchan`, "utf8").includes("read"));
      child.kill(signal);
      child.stdin.end();
      const end = await exited;
      const kept = fs.readFileSync(target);
      expect([kept.length, kept.subarray(0, 16).toString(), modeOf(target)]).toEqual([12, "old content\n", 0o640]);
      expect(end).toEqual([null, signal]);
      const left = fs.readdirSync(dir).filter((name) => name !== "target");
      expect(left.map((name) => (name.endsWith(".tmp") ? ".tmp" : name))).toEqual(residue);
    },
  );
});

/** Whether process `pid` holds a file of `dir` open (an anonymous temp shows as `dir/#ino (deleted)`). */
function openIn(pid: number, dir: string): boolean {
  return fs.readdirSync(`/proc/${pid}/fd`).some((fd) => {
    try {
      return fs.readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith(`${dir}/`);
    } catch {
      return false; // closed meanwhile
    }
  });
}

/** Process `pid`'s read calls so far (every one, whatever it returned) and the bytes they brought. */
function readsOf(pid: number): { calls: number; bytes: number } {
  const io = fs.readFileSync(`/proc/${pid}/io`, "utf8");
  return { calls: Number(/^syscr: (\d+)$/m.exec(io)?.[1]), bytes: Number(/^rchar: (\d+)$/m.exec(io)?.[1]) };
}

/**
 * Waits until `child` (once `ready` holds) has made a few read calls in a row that brought no byte:
 * with nothing to read in a non-blocking pipe, those are reads that failed with EAGAIN. Returns at
 * once if the child has exited, as a CLI that fails on EAGAIN does: its status then tells.
 */
async function emptyReads(child: { pid: number; exitCode: number | null }, ready = () => true): Promise<void> {
  let since: { calls: number; bytes: number } | undefined;
  await waitFor(() => {
    try {
      if (child.exitCode !== null || !ready()) return child.exitCode !== null;
      const now = readsOf(child.pid);
      if (since === undefined || now.bytes !== since.bytes) since = now;
      return now.calls >= since.calls + 3;
    } catch {
      return true; // gone meanwhile
    }
  });
}

async function waitFor(condition: () => boolean, timeoutMs = 10_000): Promise<void> {
  for (const start = Date.now(); !condition(); await Bun.sleep(10)) {
    if (Date.now() - start > timeoutMs) throw new Error("timed out waiting for the child");
  }
}

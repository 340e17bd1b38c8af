/**
 * The C floor (bench/floor.c): compiled on demand into bench/.build/, called through bun:ffi.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import { join } from "node:path";

export const BENCH = import.meta.dir;
export const BUILD = join(BENCH, ".build");
const SOURCE = join(BENCH, "floor.c");
export const FLOOR_LIB = join(BUILD, "libfloor.so");
export const FLOOR_CLI = join(BUILD, "floor-cli");

export interface FloorBuild {
  ok: boolean;
  /** Why there is no floor, for the report. */
  reason?: string;
  compiler?: string;
}

function compiler(): string | undefined {
  for (const cc of [process.env.CC, "cc", "gcc", "clang"]) {
    if (cc && spawnSync("sh", ["-c", `command -v ${cc}`]).status === 0) return cc;
  }
  return undefined;
}

/** Compiles the floor (library and CLI) unless both are newer than floor.c. */
export function buildFloor(): FloorBuild {
  const cc = compiler();
  if (!cc) return { ok: false, reason: "no C compiler (cc, gcc or clang) found: the C floor is skipped" };
  const version = spawnSync(cc, ["--version"], { encoding: "utf8" }).stdout.split("\n")[0] ?? cc;
  fs.mkdirSync(BUILD, { recursive: true });
  const source = fs.statSync(SOURCE).mtimeMs;
  const fresh = (file: string) => fs.existsSync(file) && fs.statSync(file).mtimeMs > source;
  const jobs: [string, string[]][] = [
    [FLOOR_LIB, ["-O2", "-Wall", "-shared", "-fPIC", "-o", FLOOR_LIB, SOURCE]],
    [FLOOR_CLI, ["-O2", "-Wall", "-DFLOOR_MAIN", "-o", FLOOR_CLI, SOURCE]],
  ];
  for (const [output, args] of jobs) {
    if (fresh(output)) continue;
    const result = spawnSync(cc, args, { encoding: "utf8" });
    if (result.status !== 0) return { ok: false, reason: `${cc} failed to build ${output}: ${result.stderr.trim()}` };
  }
  return { ok: true, compiler: version };
}

export type FloorWrite = (path: string, data: Uint8Array) => void;

export interface Floors {
  /** Named temp: open(O_CREAT|O_EXCL) ... rename. */
  named: FloorWrite;
  /** Anonymous temp: open(dir, O_TMPFILE) ... linkat ... rename. */
  tmpfile: FloorWrite;
}

let loaded: Floors | undefined;

/** The floors as functions; the library must have been built (see buildFloor). */
export function loadFloor(): Floors {
  if (loaded) return loaded;
  const { dlopen, FFIType } = require("bun:ffi") as typeof import("bun:ffi");
  const signature = { args: [FFIType.ptr, FFIType.ptr, FFIType.u64], returns: FFIType.i32 } as const;
  const { symbols } = dlopen(FLOOR_LIB, { aw_floor_write: signature, aw_floor_write_tmpfile: signature });
  // A path is encoded once per distinct string: the benchmarks write one path again and again,
  // and a C caller would hold its path as a char * already.
  const paths = new Map<string, Buffer>();
  const encoded = (path: string): Buffer => {
    let bytes = paths.get(path);
    if (!bytes) {
      bytes = Buffer.from(`${path}\0`);
      paths.set(path, bytes);
    }
    return bytes;
  };
  const wrap =
    (write: typeof symbols.aw_floor_write): FloorWrite =>
    (path, data) => {
      const result = write(encoded(path), data, data.byteLength);
      if (result !== 0) throw new Error(`floor write of ${path} failed: errno ${-result}`);
    };
  loaded = { named: wrap(symbols.aw_floor_write), tmpfile: wrap(symbols.aw_floor_write_tmpfile) };
  return loaded;
}

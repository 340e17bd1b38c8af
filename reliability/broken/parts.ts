/**
 * The correct building blocks of a durable replace, for the broken fixtures beside this file.
 * Each fixture composes them the right way except for one classic mistake, so a checker that
 * flags the fixture has caught that mistake and nothing else.
 */
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import { basename, dirname } from "node:path";

export interface Temp {
  fd: number;
  path: string;
  /** The permission bits the finished file must have (the target's, or a plain create's). */
  mode: number;
}

/** An exclusive, hidden temp beside the target, readable by no one else while it fills. */
export function openTemp(target: string): Temp {
  let mode: number;
  try {
    mode = fs.statSync(target).mode & 0o7777;
  } catch {
    mode = 0o666 & ~process.umask();
  }
  const path = `${dirname(target)}/.${basename(target)}.${randomBytes(6).toString("hex")}.tmp`;
  const flags = fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW;
  return { fd: fs.openSync(path, flags, 0o600), path, mode };
}

/** Every byte, resuming short writes. */
export function writeAll(fd: number, data: Uint8Array): void {
  for (let offset = 0; offset < data.length; ) {
    const written = fs.writeSync(fd, data, offset, data.length - offset);
    if (written <= 0) throw Object.assign(new Error("EIO: write accepted no bytes"), { code: "EIO" });
    offset += written;
  }
}

export function fsyncDirectory(dir: string): void {
  const fd = fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Clean-up after a failure: the temp goes, and the original error is the one reported. */
export function discard(temp: Temp): void {
  try {
    fs.closeSync(temp.fd);
  } catch {
    // already closed
  }
  try {
    fs.unlinkSync(temp.path);
  } catch {
    // already gone
  }
}

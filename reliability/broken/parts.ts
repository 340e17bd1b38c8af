/**
 * The correct building blocks of a durable replace, for the broken fixtures beside this file.
 * Each fixture composes them the right way except for one classic mistake, so a checker that
 * flags the fixture has caught that mistake and nothing else: errors name the target, owner and
 * mode are kept, a failed directory fsync is marked `published`, as the library does.
 */
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import { basename, dirname } from "node:path";

export interface Temp {
  fd: number;
  path: string;
  /** The target as it was, if it existed: its owner and mode are kept. */
  old?: fs.Stats;
}

/** An exclusive, hidden temp beside the target, readable by no one else while it fills. */
export function openTemp(target: string): Temp {
  const old = fs.statSync(target, { throwIfNoEntry: false });
  const path = `${dirname(target)}/.${basename(target)}.${randomBytes(6).toString("hex")}.tmp`;
  const flags = fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW;
  return { fd: fs.openSync(path, flags, 0o600), path, old };
}

/** Every byte, resuming short writes. */
export function writeAll(fd: number, data: Uint8Array): void {
  for (let offset = 0; offset < data.length; ) {
    const written = fs.writeSync(fd, data, offset, data.length - offset);
    if (written <= 0) throw Object.assign(new Error("EIO: write accepted no bytes"), { code: "EIO" });
    offset += written;
  }
}

/** The target's owner (where allowed) and mode, or a plain create's mode. */
export function ownerAndMode(temp: Temp): void {
  const { old } = temp;
  if (old && (old.uid !== process.geteuid?.() || old.gid !== process.getegid?.())) {
    try {
      fs.fchownSync(temp.fd, old.uid, old.gid);
    } catch {
      // ownership is best effort
    }
  }
  fs.fchmodSync(temp.fd, old ? old.mode & 0o7777 : 0o666 & ~process.umask());
}

/** After the rename: the new contents are in place, so a failure here is marked published. */
export function fsyncDirectory(dir: string): void {
  try {
    const fd = fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
    try {
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  } catch (error) {
    throw Object.assign(error as Error, { published: true });
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

/** Runs a write so that its error, whatever call failed, names the target. */
export function naming(target: string, write: () => void): void {
  try {
    write();
  } catch (error) {
    const failure = error as NodeJS.ErrnoException;
    failure.message = `${failure.code}: cannot write '${target}' (${failure.message})`;
    throw failure;
  }
}

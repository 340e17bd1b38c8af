/** BROKEN: truncates and rewrites the target in place, so readers and crashes see a partial file. */
import * as fs from "node:fs";
import { dirname } from "node:path";
import { fsyncDirectory, naming, writeAll } from "./parts.ts";

export function write(target: string, data: Uint8Array): void {
  naming(target, () => {
    // the mistake: no temp at all, the old contents are gone the moment this open returns
    const fd = fs.openSync(target, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_TRUNC, 0o666);
    try {
      writeAll(fd, data);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fsyncDirectory(dirname(target));
  });
}

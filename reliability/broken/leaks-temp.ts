/** BROKEN: on a failure it closes the temp and rethrows, but leaves the temp file behind. */
import * as fs from "node:fs";
import { dirname } from "node:path";
import { fsyncDirectory, naming, openTemp, ownerAndMode, writeAll } from "./parts.ts";

export function write(target: string, data: Uint8Array): void {
  naming(target, () => {
    const temp = openTemp(target);
    try {
      writeAll(temp.fd, data);
      ownerAndMode(temp);
      fs.fsyncSync(temp.fd);
      fs.closeSync(temp.fd);
      fs.renameSync(temp.path, target);
    } catch (error) {
      // the mistake: no fs.unlinkSync(temp.path) here
      try {
        fs.closeSync(temp.fd);
      } catch {
        // already closed
      }
      throw error;
    }
    fsyncDirectory(dirname(target));
  });
}

/** BROKEN: renames the temp over the target without fsyncing it first (data may not be on disk). */
import * as fs from "node:fs";
import { dirname } from "node:path";
import { discard, fsyncDirectory, naming, openTemp, ownerAndMode, writeAll } from "./parts.ts";

export function write(target: string, data: Uint8Array): void {
  naming(target, () => {
    const temp = openTemp(target);
    try {
      writeAll(temp.fd, data);
      ownerAndMode(temp);
      // the mistake: no fs.fsyncSync(temp.fd) here
      fs.closeSync(temp.fd);
      fs.renameSync(temp.path, target);
    } catch (error) {
      discard(temp);
      throw error;
    }
    fsyncDirectory(dirname(target));
  });
}

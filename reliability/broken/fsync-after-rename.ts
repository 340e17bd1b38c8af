/** BROKEN: renames first and fsyncs the data afterwards, so the new name may point at missing data. */
import * as fs from "node:fs";
import { dirname } from "node:path";
import { discard, fsyncDirectory, naming, openTemp, ownerAndMode, writeAll } from "./parts.ts";

export function write(target: string, data: Uint8Array): void {
  naming(target, () => {
    const temp = openTemp(target);
    try {
      writeAll(temp.fd, data);
      ownerAndMode(temp);
      fs.renameSync(temp.path, target);
      // the mistake: this fsync belongs before the rename
      fs.fsyncSync(temp.fd);
      fs.closeSync(temp.fd);
    } catch (error) {
      discard(temp);
      throw error;
    }
    fsyncDirectory(dirname(target));
  });
}

/** BROKEN: one write(2) per buffer, trusting it wrote everything; a short count loses the tail. */
import * as fs from "node:fs";
import { dirname } from "node:path";
import { discard, fsyncDirectory, naming, openTemp, ownerAndMode } from "./parts.ts";

export function write(target: string, data: Uint8Array): void {
  naming(target, () => {
    const temp = openTemp(target);
    try {
      // the mistake: the returned count is ignored instead of resuming the rest
      fs.writeSync(temp.fd, data, 0, data.length);
      ownerAndMode(temp);
      fs.fsyncSync(temp.fd);
      fs.closeSync(temp.fd);
      fs.renameSync(temp.path, target);
    } catch (error) {
      discard(temp);
      throw error;
    }
    fsyncDirectory(dirname(target));
  });
}

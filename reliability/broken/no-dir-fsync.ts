/** BROKEN: never fsyncs the directory, so the rename itself may be lost on power failure. */
import * as fs from "node:fs";
import { discard, naming, openTemp, ownerAndMode, writeAll } from "./parts.ts";

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
      discard(temp);
      throw error;
    }
    // the mistake: no fsync of dirname(target) here
  });
}

/**
 * Torture reader: `bun reliability/reader.ts TARGET DURATION_MS`. Reads TARGET over and over for
 * DURATION_MS and checks every read is one whole version (self-describing payload). Prints one
 * JSON line: reads, bad reads (torn, empty, missing) with the first few reasons, versions seen.
 */
import * as fs from "node:fs";
import { verifyPayload } from "./common.ts";

const [target, duration] = process.argv.slice(2) as [string, string];
const until = Date.now() + Number(duration);
let reads = 0;
let bad = 0;
const reasons: string[] = [];
const versions = new Set<number>();
while (Date.now() < until) {
  let bytes: Buffer;
  try {
    bytes = fs.readFileSync(target);
  } catch (error) {
    bad++;
    if (reasons.length < 5) reasons.push(`read failed: ${(error as NodeJS.ErrnoException).code}`);
    continue;
  }
  reads++;
  const verdict = verifyPayload(bytes);
  if (verdict.ok) versions.add(verdict.version);
  else {
    bad++;
    if (reasons.length < 5) reasons.push(verdict.why);
  }
}
process.stdout.write(`${JSON.stringify({ reads, bad, reasons, versions: versions.size })}\n`);

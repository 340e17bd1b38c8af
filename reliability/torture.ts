/**
 * kill -9 torture. Writer processes replace one target in a loop and are killed with SIGKILL at
 * random moments (then restarted), while a reader process reads the target the whole time and
 * checks every read is one whole version. Afterwards the target must still be a whole version.
 * Temps left behind by the kills are counted and reported: with named temps
 * (ATOMIC_WRITE_TMPFILE=0) a kill between create and rename leaves one; with anonymous O_TMPFILE
 * temps only a kill between linkat and rename can.
 */
import * as fs from "node:fs";
import { join } from "node:path";
import { BUN, tempResidue } from "../test/helpers.ts";
import {
  CHILD,
  cli,
  durableFile,
  freshDir,
  HERE,
  hashSeed,
  makePayload,
  prng,
  type Row,
  type TempKind,
  tempEnv,
  verifyPayload,
  type Writer,
} from "./common.ts";

export interface Torture {
  writer: Writer;
  kind: TempKind;
  reads: number;
  badReads: number;
  reasons: string[];
  versionsSeen: number;
  kills: number;
  finalBad?: string;
  residue: number;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export async function torture(
  writer: Writer,
  kind: TempKind,
  work: string,
  options: { durationMs: number; lanes: number; seed: number },
): Promise<Torture> {
  const dir = freshDir(work, `torture-${writer}-${kind}`);
  const target = join(dir, "target");
  durableFile(target, makePayload(1, 1000));
  const env = { ...(process.env as Record<string, string>), ...tempEnv(kind) };
  const binary = writer === "cli" ? cli(work) : ""; // built before the clock starts
  const until = Date.now() + options.durationMs;
  const reader = Bun.spawn([BUN, join(HERE, "reader.ts"), target, String(options.durationMs)], {
    stdout: "pipe",
    stderr: "inherit",
  });
  // CLI lanes feed the binary a payload from a file: a few versions of various sizes.
  const inputs: string[] = [];
  if (writer === "cli") {
    for (let n = 0; n < 8; n++) {
      const file = join(work, `torture-input-${n}.bin`);
      fs.writeFileSync(file, makePayload(900_000 + n, 16 * 2 ** n * 8));
      inputs.push(file);
    }
  }
  let kills = 0;
  const lane = async (id: number) => {
    const random = prng(hashSeed(options.seed, writer, kind, id));
    for (let round = 0; Date.now() < until; round++) {
      const proc =
        writer === "cli"
          ? Bun.spawn([binary, target], {
              stdin: Bun.file(inputs[round % inputs.length] as string),
              stdout: "ignore",
              stderr: "ignore",
              env,
            })
          : Bun.spawn(
              [BUN, CHILD, "--loop", writer, target, String(id + 1), String(hashSeed(options.seed, id, round))],
              {
                stdout: "ignore",
                stderr: "inherit",
                env,
              },
            );
      // A CLI run is short, a looping writer lives until killed: delays span startup and writing.
      const delay = writer === "cli" ? 20 + random() * 300 : 60 + random() * 400;
      await Promise.race([proc.exited, sleep(delay)]);
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill("SIGKILL");
        kills++;
      }
      await proc.exited;
    }
  };
  await Promise.all(Array.from({ length: options.lanes }, (_, id) => lane(id)));
  const report = JSON.parse((await new Response(reader.stdout).text()).trim() || "{}") as {
    reads?: number;
    bad?: number;
    reasons?: string[];
    versions?: number;
  };
  await reader.exited;
  const result: Torture = {
    writer,
    kind,
    reads: report.reads ?? 0,
    badReads: report.bad ?? 0,
    reasons: report.reasons ?? [],
    versionsSeen: report.versions ?? 0,
    kills,
    residue: tempResidue(dir).length,
  };
  const final = verifyPayload(fs.readFileSync(target));
  if (!final.ok) result.finalBad = final.why;
  if (result.reads === 0) result.finalBad = "the reader made no reads";
  return result;
}

export function tortureRow(writer: Writer, runs: Torture[]): Row {
  return {
    technique: "kill -9 torture",
    writer,
    states: runs.reduce((n, r) => n + r.reads, 0),
    faults: runs.reduce((n, r) => n + r.kills, 0),
    bad: runs.reduce((n, r) => n + r.badReads + (r.finalBad ? 1 : 0), 0),
    residue: runs.reduce((n, r) => n + r.residue, 0),
    note: runs.map((r) => `${r.kind}: ${r.residue} temps left, ${r.versionsSeen} versions read`).join("; "),
  };
}

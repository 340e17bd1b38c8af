/**
 * Real short writes: the kernel, not a mock, returns fewer bytes than asked.
 *
 * - `prlimit --fsize=N` with SIGXFSZ ignored: a write crossing N bytes is cut at N, the next one
 *   fails with EFBIG;
 * - a nearly full tmpfs: a write larger than the free space is cut where the space ends, the next
 *   one fails with ENOSPC.
 *
 * Each run must end with the whole new version in place, or fail cleanly: the error (.code EFBIG
 * or ENOSPC; the CLI exits 1), the directory exactly as before, no temp left. The injector's log
 * (no injection, only watching) counts the short writes that really happened.
 */
import * as fs from "node:fs";
import { join } from "node:path";
import { fillDisk, isRoot, mountTmpfs, snapshot, tempResidue } from "../test/helpers.ts";
import {
  buildInjector,
  durableFile,
  escapeRegex,
  freshDir,
  makePayload,
  outcomeOf,
  pool,
  type Row,
  spawnAsync,
  type Writer,
  writerCommand,
} from "./common.ts";

export interface ShortRun {
  writer: Writer;
  how: string;
  shortWrites: number;
  problems: string[];
  residue: number;
  /** The write reported success although the target is not the whole new version. */
  silentLoss: boolean;
}

const BODY = 100_000;

async function attempt(
  writer: Writer,
  dir: string,
  how: string,
  wrap: string[],
  work: string,
  expectedCode: string,
): Promise<ShortRun> {
  const target = join(dir, "target");
  const next = makePayload(2, BODY);
  const payloadFile = join(work, `${how.replace(/\W/g, "_")}-${writer.replace(":", "_")}.payload`);
  fs.writeFileSync(payloadFile, next);
  const before = snapshot(dir);
  const log = `${payloadFile}.log`;
  const command = writerCommand(writer, target, payloadFile, "anonymous", work);
  const watcher = [
    buildInjector(work),
    "--watch",
    "write,pwrite64",
    "--match",
    `${escapeRegex(dir)}/`,
    "--log",
    log,
    "--",
  ];
  // The watcher stays outside the limit: its own log must not be cut short.
  const run = await spawnAsync([...watcher, ...wrap, ...command.argv], command.env);
  const outcome = outcomeOf(writer, run);
  const writes = fs
    .readFileSync(log, "utf8")
    .split("\n")
    .filter((line) => line.includes("\tMATCH "));
  const shortWrites = writes.filter((line) => {
    const [, , ret, count] = line.split("\t");
    return Number(ret) > 0 && Number(ret) < Number((count ?? "").replace("COUNT ", ""));
  }).length;
  const result: ShortRun = { writer, how, shortWrites, problems: [], residue: 0, silentLoss: false };
  const residue = tempResidue(dir);
  result.residue = residue.length;
  if (residue.length > 0) result.problems.push(`temp left behind: ${residue.join(", ")}`);
  if (outcome.ok) {
    const bytes = fs.readFileSync(target);
    if (!bytes.equals(next)) {
      result.silentLoss = true;
      result.problems.push(`reported success, but the target has ${bytes.length} of ${next.length} bytes`);
    }
  } else {
    if (writer === "cli" ? outcome.status !== 1 : outcome.code !== expectedCode) {
      result.problems.push(`failed with ${outcome.code ?? `exit ${outcome.status}`}, expected ${expectedCode}`);
    }
    if (JSON.stringify(snapshot(dir)) !== JSON.stringify(before)) result.problems.push("the directory changed");
  }
  fs.rmSync(payloadFile, { force: true });
  return result;
}

/** Limits around the interesting edges: nothing, one byte, a page, the pipe size, the payload. */
function limits(total: number, quick: boolean): number[] {
  const all = [1, 4095, 4096, 65_536, 65_537, total - 1, total, total + 1];
  return quick ? [1, 65_537, total - 1, total] : all;
}

export async function shortWrites(writer: Writer, work: string, quick: boolean): Promise<ShortRun[]> {
  const total = makePayload(2, BODY).length;
  const jobs: (() => Promise<ShortRun>)[] = [];
  for (const limit of limits(total, quick)) {
    jobs.push(async () => {
      const dir = freshDir(work, `fsize-${limit}-${writer}`);
      durableFile(join(dir, "target"), makePayload(1, 1000), 0o644);
      // An ignored signal stays ignored across exec, so the write gets EFBIG instead of dying.
      const wrap = ["sh", "-c", 'trap "" XFSZ; exec prlimit --fsize="$0" "$@"', String(limit)];
      return attempt(writer, dir, `fsize=${limit}`, wrap, work, "EFBIG");
    });
  }
  const runs = await pool(jobs, 2);
  if (isRoot) {
    // A small tmpfs, then a filler leaving about 40 KiB: the 100 KB write is cut where space ends.
    const mount = mountTmpfs(512);
    const dir = join(mount, "d");
    fs.mkdirSync(dir);
    durableFile(join(dir, "target"), makePayload(1, 1000), 0o644);
    fillDisk(mount);
    fs.truncateSync(join(mount, "filler"), Math.max(0, fs.statSync(join(mount, "filler")).size - 40 * 1024));
    runs.push(await attempt(writer, dir, "nearly full tmpfs", [], work, "ENOSPC"));
  }
  return runs;
}

export function shortRow(writer: Writer, runs: ShortRun[]): Row {
  return {
    technique: "real short writes",
    writer,
    states: runs.length,
    faults: runs.reduce((n, r) => n + r.shortWrites, 0),
    bad: runs.filter((r) => r.problems.length > 0).length,
    residue: runs.reduce((n, r) => n + r.residue, 0),
    note: "prlimit --fsize + full tmpfs; faults = short counts seen",
  };
}

/**
 * `bun reliability/run.ts [--quick] [--only=crash,faults,short,kill,block] [--seed=N] [--keep]`
 *
 * Runs every reliability technique against the library's APIs and the compiled CLI, then against
 * the deliberately broken writers of reliability/broken/ (each must be caught by the checker named
 * for it), and prints one table: technique x writer -> states explored, faults injected, bad states
 * found, temp residue found. Exits non-zero when the library shows any bad state, or when a broken
 * writer slips past the checker that exists to catch it.
 */
import { cleanup, isRoot, mountTmpfs, tempDir } from "../test/helpers.ts";
import { type BlockRun, blockRow, blockRun, blockTools, type FsKind } from "./blocklevel.ts";
import { APIS, BATCHES, BROKEN, type Broken, printTable, type Row, type TempKind, type Writer } from "./common.ts";
import { crashRow, crashRun } from "./explorer.ts";
import { type Cell, faultMatrix, faultRow, printMatrix } from "./faults.ts";
import { shortRow, shortWrites } from "./shortwrites.ts";
import { torture, tortureRow } from "./torture.ts";

const argv = process.argv.slice(2);
const quick = argv.includes("--quick");
const keep = argv.includes("--keep");
const seed = Number(argv.find((a) => a.startsWith("--seed="))?.slice(7) ?? 20240601);
const only = argv
  .find((a) => a.startsWith("--only="))
  ?.slice(7)
  .split(",");
const TECHNIQUES = ["crash", "faults", "short", "kill", "block"];
const unknown = only?.filter((name) => !TECHNIQUES.includes(name)) ?? [];
if (unknown.length > 0) {
  console.error(`unknown technique ${unknown.join(", ")}; choose from ${TECHNIQUES.join(", ")}`);
  process.exit(2);
}
const wanted = (technique: string) => only === undefined || only.includes(technique);

/** Which checkers exist to catch which broken writer: each one listed must catch it. */
const CAUGHT_BY: Record<Broken, string[]> = {
  "no-fsync-temp": ["crash", "block"],
  "no-dir-fsync": ["crash", "block"],
  "fsync-after-rename": ["crash"],
  "in-place-trunc": ["crash", "kill"],
  "single-write": ["short"],
  "leaks-temp": ["faults"],
};

const mustCatch = (name: Broken, technique: string) => CAUGHT_BY[name].includes(technique);

const rows: Row[] = [];
const failures: string[] = [];
const caught = new Map<Broken, string[]>();
const started = Date.now();

function isBrokenWriter(writer: Writer): boolean {
  return writer.startsWith("broken:");
}

function log(text: string): void {
  process.stderr.write(`${text}\n`);
}

function brokenResult(writer: Writer, technique: string, bad: number, detail: string): void {
  const name = writer.slice("broken:".length) as Broken;
  if (bad > 0) caught.set(name, [...(caught.get(name) ?? []), technique]);
  log(`  ${writer} under ${technique}: ${bad > 0 ? `caught (${detail})` : "not caught"}`);
}

// A tmpfs keeps thousands of fsyncs off the real disk; nothing here relies on them persisting
// (the block-level check brings its own file system images).
const work = isRoot ? mountTmpfs(2 * 1024 * 1024) : tempDir("reliability-");
const KINDS: TempKind[] = ["anonymous", "named"];

/** Runs one technique; if it cannot run at all (a tool missing, an unsupported machine), that is a failure too. */
async function technique(name: string, body: () => Promise<void>): Promise<void> {
  if (!wanted(name)) return;
  try {
    await body();
  } catch (error) {
    failures.push(`${name}: could not run: ${(error as Error).message}`);
    log(`  ${name} could not run: ${(error as Error).stack}`);
  }
}

try {
  if (!isRoot) log("note: not root; the block-level check cannot mount its images and will fail");

  await technique("crash", async () => {
    log("crash-state explorer");
    const cap = quick ? 512 : 4096;
    for (const api of [...APIS, ...BATCHES]) {
      const runs = [];
      for (const kind of KINDS) runs.push(crashRun(api, kind, true, work, { cap, seed }));
      if (!quick) runs.push(crashRun(api, "anonymous", false, work, { cap, seed }));
      for (const run of runs) {
        if (run.problem) failures.push(`crash states, ${api} (${run.kind}): ${run.problem}`);
        for (const bad of run.exploration.bad) {
          failures.push(
            `crash states, ${api} (${run.kind}): crash after ${bad.crashAfter}: ${bad.why} [${bad.persisted}]`,
          );
        }
      }
      rows.push(crashRow(runs, api));
      log(`  ${api}: ${runs.reduce((n, r) => n + r.exploration.states, 0)} states`);
    }
    for (const name of BROKEN) {
      const writer = `broken:${name}` as Writer;
      const run = crashRun(writer, "named", true, work, { cap, seed });
      const bad = run.exploration.badCount + (run.problem ? 1 : 0);
      rows.push({ ...crashRow([run], writer), note: mustCatch(name, "crash") ? "must be caught here" : "" });
      brokenResult(writer, "crash", bad, run.exploration.bad[0]?.why ?? run.problem ?? "");
    }
  });

  await technique("faults", async () => {
    log("syscall fault matrix");
    const errnos = quick ? ["EIO"] : ["EIO", "ENOSPC", "EACCES"];
    const report = (writer: Writer, cells: Cell[]) => {
      log(printMatrix(writer, cells));
      for (const cell of cells.filter((c) => c.problems.length > 0).slice(0, 5)) {
        log(`  BAD ${cell.kind} ${cell.step} ${cell.errno}: ${cell.problems.join("; ")}`);
      }
      rows.push(faultRow(writer, cells));
    };
    for (const api of [...APIS, ...BATCHES]) {
      const kinds = quick
        ? [{ kind: "anonymous" as TempKind, errnos }]
        : [
            { kind: "anonymous" as TempKind, errnos },
            { kind: "named" as TempKind, errnos: ["EIO"] },
          ];
      const cells = await faultMatrix(api, kinds, work);
      report(api, cells);
      for (const cell of cells) {
        if (cell.problems.length > 0) {
          failures.push(`fault matrix, ${api} (${cell.kind}), ${cell.step} ${cell.errno}: ${cell.problems.join("; ")}`);
        }
      }
    }
    for (const name of ["leaks-temp", "in-place-trunc"] as Broken[]) {
      const writer = `broken:${name}` as Writer;
      const cells = await faultMatrix(writer, [{ kind: "named", errnos: ["EIO"] }], work);
      report(writer, cells);
      // Caught means the fixture's own mistake showed, not some other difference.
      const symptom =
        name === "leaks-temp"
          ? cells.filter((c) => c.residue > 0)
          : cells.filter((c) => c.problems.some((p) => p.startsWith("the directory changed")));
      rows[rows.length - 1] = {
        ...(rows[rows.length - 1] as Row),
        note: mustCatch(name, "faults") ? "must be caught here" : "",
      };
      brokenResult(writer, "faults", symptom.length, symptom[0] ? `${symptom[0].step}: ${symptom[0].problems[0]}` : "");
    }
  });

  await technique("short", async () => {
    log("real short writes");
    for (const writer of [...APIS, "broken:single-write"] as Writer[]) {
      const runs = await shortWrites(writer, work, quick);
      const row = shortRow(writer, runs);
      rows.push(isBrokenWriter(writer) ? { ...row, note: "must be caught here" } : row);
      for (const run of runs.filter((r) => r.problems.length > 0)) {
        const text = `real short writes, ${writer}, ${run.how}: ${run.problems.join("; ")}`;
        if (isBrokenWriter(writer)) log(`  ${text}`);
        else failures.push(text);
      }
      if (!isBrokenWriter(writer)) {
        log(`  ${writer}: ${runs.length} runs, ${row.faults} short writes`);
        // A run of limits that never cut a write short would prove nothing.
        if (row.faults === 0) failures.push(`real short writes, ${writer}: no write was ever cut short`);
      } else {
        const lost = runs.filter((r) => r.silentLoss);
        brokenResult(writer, "short", lost.length, lost[0] ? `${lost[0].how}: ${lost[0].problems[0]}` : "");
      }
    }
  });

  await technique("kill", async () => {
    log("kill -9 torture");
    const options = { durationMs: quick ? 1000 : 2500, lanes: 2, seed };
    for (const api of APIS) {
      const runs = [];
      for (const kind of quick ? (["anonymous"] as TempKind[]) : KINDS)
        runs.push(await torture(api, kind, work, options));
      rows.push(tortureRow(api, runs));
      for (const run of runs) {
        log(
          `  ${api} (${run.kind}): ${run.reads} reads, ${run.kills} kills, ${run.badReads} bad reads, ${run.residue} temps left`,
        );
        if (run.badReads > 0)
          failures.push(`kill -9 torture, ${api} (${run.kind}): ${run.badReads} bad reads: ${run.reasons.join("; ")}`);
        if (run.finalBad) failures.push(`kill -9 torture, ${api} (${run.kind}): ${run.finalBad}`);
        if (run.kills === 0) failures.push(`kill -9 torture, ${api} (${run.kind}): no writer was ever killed`);
      }
    }
    const writer: Writer = "broken:in-place-trunc";
    const run = await torture(writer, "named", work, { ...options, durationMs: 1500 });
    rows.push({ ...tortureRow(writer, [run]), note: "must be caught here" });
    brokenResult(writer, "kill", run.badReads, run.reasons[0] ?? "");
  });

  await technique("block", async () => {
    log("block level (loop-mounted ext4 noauto_da_alloc, xfs)");
    const missing = blockTools();
    if (!isRoot || missing.length > 0) {
      const why = !isRoot ? "needs root to mount images" : `missing ${missing.join(", ")}`;
      failures.push(`block level check could not run: ${why}`);
    } else {
      const kinds: FsKind[] = ["ext4", "xfs"];
      for (const api of quick ? (["sync-bytes", "async-bytes", "cli"] as Writer[]) : APIS) {
        const runs: BlockRun[] = [];
        for (const kind of kinds) runs.push(await blockRun(api, kind, work));
        rows.push(blockRow(api, runs));
        for (const run of runs) {
          log(`  ${api} on ${run.fs}: ${run.snapshots} images, ${run.bad.length} bad`);
          if (run.problem) failures.push(`block level, ${api} on ${run.fs}: ${run.problem}`);
          for (const bad of run.bad) failures.push(`block level, ${api} on ${run.fs}: ${bad}`);
        }
      }
      for (const name of ["no-fsync-temp", "no-dir-fsync", "fsync-after-rename"] as Broken[]) {
        const writer = `broken:${name}` as Writer;
        const runs: BlockRun[] = [];
        for (const kind of kinds) runs.push(await blockRun(writer, kind, work));
        rows.push({ ...blockRow(writer, runs), note: mustCatch(name, "block") ? "must be caught here" : "" });
        // Caught means caught on each file system.
        const everywhere = runs.every((r) => r.bad.length > 0);
        brokenResult(
          writer,
          "block",
          everywhere ? 1 : 0,
          runs.map((r) => `${r.fs}: ${r.bad[0] ?? r.problem ?? "clean"}`).join("; "),
        );
      }
    }
  });
} finally {
  if (!keep) cleanup();
  else log(`kept ${work}`);
}

const expected = BROKEN.flatMap((name) => CAUGHT_BY[name].filter(wanted).map((technique) => ({ name, technique })));
const missed = expected.filter(({ name, technique }) => !(caught.get(name) ?? []).includes(technique));
for (const { name, technique } of missed)
  failures.push(`broken writer ${name} was not caught by the ${technique} check`);

console.log(printTable(rows));
console.log("");
console.log(
  `broken writers caught where they must be: ${expected.length - missed.length} of ${expected.length}` +
    ` (${BROKEN.map((n) => `${n}: ${(caught.get(n) ?? []).join("+") || "-"}`).join(", ")})`,
);
for (const failure of failures.slice(0, 40)) console.log(`FAIL ${failure}`);
if (failures.length > 40) console.log(`... and ${failures.length - 40} more`);
console.log(
  `reliability: ${failures.length === 0 ? "ok" : `${failures.length} failures`} in ${((Date.now() - started) / 1000).toFixed(0)} s`,
);
process.exitCode = failures.length === 0 ? 0 : 1;

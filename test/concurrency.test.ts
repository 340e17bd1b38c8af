/**
 * Concurrency torture: Workers and child processes replace one path with self-checking payloads
 * (test/fixtures/payload.ts) of 100 B to 2 MiB while readers (a process and a Worker) read it in a
 * tight loop and check every single read. The contract: no reader ever sees a torn, truncated or
 * missing file, never an older version of a writer after a newer one (each writer's writes settle
 * in call order), and the file ends as one writer's last complete payload, with no temp left behind.
 * Half the writers use the anonymous (O_TMPFILE) temps, half the named ones. The detector itself
 * is proven on every run against a deliberately broken in-place writer.
 */
import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import * as fs from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import type { ReaderConfig, ReaderResult } from "./fixtures/concurrent-reader.ts";
import type { WriterConfig, WriterResult } from "./fixtures/concurrent-writer.ts";
import { checkPayload, makePayload } from "./fixtures/payload.ts";
import { BUN, cleanup, ROOT, TIMEOUT_MS, tempDir, tempResidue } from "./helpers.ts";

setDefaultTimeout(TIMEOUT_MS);
afterAll(cleanup);

const FIXTURES = join(ROOT, "test", "fixtures");
const WRITER = join(FIXTURES, "concurrent-writer.ts");
const READER = join(FIXTURES, "concurrent-reader.ts");
const IN_PLACE_WRITER = join(FIXTURES, "in-place-writer.ts");

/** Writers stop starting new writes after this long; the whole test stays within a few seconds. */
const WRITE_MILLIS = 2000;
const WRITES_PER_WRITER = 400;

type Where = "worker" | "process";

/** Runs a fixture in a Worker: config in by message, result out by message. */
function inWorker<T>(script: string, config: unknown, env: Record<string, string | undefined>): Promise<T> {
  const worker = new Worker(pathToFileURL(script).href, { env: withEnv(env) });
  return new Promise<T>((resolve, reject) => {
    worker.addEventListener("message", (event) => {
      resolve(event.data as T);
      worker.terminate();
    });
    worker.addEventListener("error", (event) => {
      reject(new Error(`Worker ${script} failed: ${event.message}`));
      worker.terminate();
    });
    worker.postMessage(config);
  });
}

/** Runs a fixture as a child process: config as JSON in argv, result as its last stdout line. */
async function inProcess<T>(script: string, config: unknown, env: Record<string, string | undefined>): Promise<T> {
  const child = Bun.spawn([BUN, script, JSON.stringify(config)], { stdout: "pipe", stderr: "pipe", env: withEnv(env) });
  const [out, err, status] = await Promise.all([
    new Response(child.stdout).text(),
    new Response(child.stderr).text(),
    child.exited,
  ]);
  if (status !== 0) throw new Error(`${script} exited with ${status}: ${err}`);
  return JSON.parse(out.trim().split("\n").pop() as string) as T;
}

function run<T>(
  where: Where,
  script: string,
  config: unknown,
  env: Record<string, string | undefined> = {},
): Promise<T> {
  return where === "worker" ? inWorker<T>(script, config, env) : inProcess<T>(script, config, env);
}

/** This process's environment with `changes` applied (an undefined value removes the variable). */
function withEnv(changes: Record<string, string | undefined>): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [name, value] of Object.entries({ ...process.env, ...changes }))
    if (value !== undefined) env[name] = value;
  return env;
}

async function waitForFile(path: string, millis: number): Promise<void> {
  const until = Date.now() + millis;
  while (!fs.existsSync(path)) {
    if (Date.now() > until) throw new Error(`${path} did not appear within ${millis} ms`);
    await Bun.sleep(5);
  }
}

interface Torture {
  /** `tmpfile` is the writer's ATOMIC_WRITE_TMPFILE: the library's anonymous or named temps. */
  writers: { where: Where; script: string; tmpfile?: string }[];
  readers: Where[];
  api: WriterConfig["api"];
  /** How long writers keep starting new writes. */
  millis?: number;
}

interface Outcome {
  dir: string;
  target: string;
  writers: WriterResult[];
  readers: ReaderResult[];
}

/** Starts the readers, waits until each has read once, runs the writers, then stops the readers. */
async function torture(plan: Torture): Promise<Outcome> {
  const dir = tempDir("torture-");
  const control = tempDir("control-");
  const target = join(dir, "target");
  // Present before any reader starts: from then on, a missing file is a failure like any other.
  fs.writeFileSync(target, makePayload(0, 0, 1000));
  const stopFile = join(control, "stop");
  const safety = Date.now() + WRITE_MILLIS + 30_000; // only if the test itself never says stop
  const readers = plan.readers.map((where, index) => {
    const config: ReaderConfig = {
      path: target,
      readyFile: join(control, `ready-${index}`),
      stopFile,
      deadline: safety,
    };
    return { ready: config.readyFile, result: run<ReaderResult>(where, READER, config) };
  });
  try {
    await Promise.all(readers.map((reader) => waitForFile(reader.ready, 15_000)));
    const deadline = Date.now() + (plan.millis ?? WRITE_MILLIS);
    const writers = await Promise.all(
      plan.writers.map(({ where, script, tmpfile }, index) => {
        const config: WriterConfig = {
          path: target,
          writer: index + 1,
          count: WRITES_PER_WRITER,
          deadline,
          api: plan.api,
        };
        return run<WriterResult>(where, script, config, { ATOMIC_WRITE_TMPFILE: tmpfile });
      }),
    );
    fs.writeFileSync(stopFile, "");
    return { dir, target, writers, readers: await Promise.all(readers.map((reader) => reader.result)) };
  } finally {
    fs.writeFileSync(stopFile, "");
  }
}

function summary(outcome: Outcome): string {
  const writes = outcome.writers.reduce((sum, writer) => sum + writer.writes, 0);
  const reads = outcome.readers.map(
    (r) => `${r.verified}/${r.reads} verified, ${r.versions} versions seen, ${r.backwards} backwards`,
  );
  return `${writes} writes by ${outcome.writers.length} writers; readers: ${reads.join("; ")}`;
}

/** Every read whole, the final file one writer's last payload, nothing else in the directory. */
function expectNoTornReads(outcome: Outcome): void {
  for (const writer of outcome.writers) {
    expect(writer.error).toBeUndefined();
    expect(writer.writes).toBeGreaterThan(0);
  }
  for (const reader of outcome.readers) {
    expect(reader.examples).toEqual([]);
    expect(reader.torn).toBe(0);
    expect(reader.backwards).toBe(0);
    expect(reader.verified).toBe(reader.reads);
    // The reader saw the file change under it: it really ran while the writers did.
    expect(reader.versions).toBeGreaterThanOrEqual(2);
  }
  const final = checkPayload(fs.readFileSync(outcome.target));
  if (typeof final === "string") throw new Error(`the final file is not one whole payload: ${final}`);
  const author = outcome.writers.find((writer) => writer.writer === final.writer);
  expect(author).toBeDefined();
  expect(final.seq).toBe(author?.lastSeq as number);
  expect(tempResidue(outcome.dir)).toEqual([]);
  expect(fs.readdirSync(outcome.dir)).toEqual(["target"]);
}

/** Two Workers and two processes; in each pair one uses anonymous (O_TMPFILE) temps, one named temps. */
const MIXED_WRITERS: Torture["writers"] = [
  { where: "worker", script: WRITER },
  { where: "worker", script: WRITER, tmpfile: "0" },
  { where: "process", script: WRITER },
  { where: "process", script: WRITER, tmpfile: "0" },
];

describe("concurrent writers to one path", () => {
  test("with the sync API, readers in another process and in a Worker never see a torn, missing or out-of-order version", async () => {
    const outcome = await torture({ writers: MIXED_WRITERS, readers: ["process", "worker"], api: "sync" });
    console.log(`sync API: ${summary(outcome)}`);
    expectNoTornReads(outcome);
  });

  test("with the async API (bytes, stream, text; two writes in flight), readers never see a torn, missing or out-of-order version", async () => {
    const outcome = await torture({ writers: MIXED_WRITERS, readers: ["process", "worker"], api: "async" });
    console.log(`async API: ${summary(outcome)}`);
    expectNoTornReads(outcome);
  });

  test("the torn-read detector catches an in-place writer", async () => {
    const outcome = await torture({
      writers: [{ where: "process", script: IN_PLACE_WRITER }],
      readers: ["process"],
      api: "sync",
      millis: 1000, // an in-place writer tears reads at once: no need for the full run
    });
    const reader = outcome.readers[0] as ReaderResult;
    console.log(`in-place writer: ${summary(outcome)}; ${reader.torn} torn, e.g. ${reader.examples.join(" | ")}`);
    expect(outcome.writers[0]?.writes).toBeGreaterThan(0);
    expect(reader.torn).toBeGreaterThan(0);
    expect(reader.examples.length).toBeGreaterThan(0);
  });
});

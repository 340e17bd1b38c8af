/**
 * One writer in a child process: `bun reliability/child.ts WRITER TARGET PAYLOAD_FILE`.
 * WRITER is an API of the library (sync-bytes, sync-text, async-bytes, async-text, stream) or
 * `broken:NAME` for a fixture of reliability/broken/. Prints one JSON line: `{"ok":true}` or the
 * error's code, message and `published` flag. The payload is read before the write starts, so a
 * trace of this process shows the write and nothing else touching the target's directory.
 *
 * `bun reliability/child.ts --loop WRITER TARGET WRITER_ID [SIZE_SEED]` writes ever newer versions
 * until it is killed (the kill -9 torture); versions are WRITER_ID * 1e6 + n.
 */
import * as fs from "node:fs";
import { type Broken, makePayload, prng, secondPayload, type Writer } from "./common.ts";

// A mutated copy of the library can stand in for the real one, to prove the checkers catch it.
const lib = (await import(process.env.RELIABILITY_LIBRARY ?? "../index.ts")) as typeof import("../index.ts");

/** `second` is the other file's payload, for the batch writers. */
type WriteFn = (path: string, data: Buffer, second?: Buffer) => void | Promise<void>;

const STREAM_CHUNK = 16 * 1024;

async function* chunksOf(data: Buffer): AsyncGenerator<Uint8Array | string> {
  for (let at = 0, n = 0; at < data.length; at += STREAM_CHUNK, n++) {
    const piece = data.subarray(at, at + STREAM_CHUNK);
    // Every other chunk as a string: both kinds of chunk go through the same protocol.
    yield n % 2 === 0 ? piece : piece.toString("latin1");
  }
}

async function writerFor(writer: Writer): Promise<WriteFn> {
  switch (writer) {
    case "sync-bytes":
      return (path, data) => lib.atomicWriteBytes(path, data);
    case "sync-text":
      return (path, data) => lib.atomicWriteText(path, data.toString("latin1"), { encoding: "latin1" });
    case "async-bytes":
      return (path, data) => lib.atomicWriteBytesAsync(path, data);
    case "async-text":
      return (path, data) => lib.atomicWriteTextAsync(path, data.toString("latin1"), { encoding: "latin1" });
    case "stream":
      return (path, data) => lib.atomicWriteStream(path, chunksOf(data), { encoding: "latin1" });
    case "batch":
      return (path, data, second) =>
        lib.atomicWriteMany([
          { path, data },
          { path: `${path}2`, data: second ?? data },
        ]);
    case "batch-async":
      return (path, data, second) =>
        lib.atomicWriteManyAsync([
          { path, data },
          { path: `${path}2`, data: (second ?? data).toString("latin1"), encoding: "latin1" },
        ]);
    case "cli":
      throw new Error("the CLI is its own binary, not a child of this script");
    default: {
      const name = writer.slice("broken:".length) as Broken;
      const fixture = (await import(`./broken/${name}.ts`)) as { write: WriteFn };
      return fixture.write;
    }
  }
}

async function once(writer: Writer, target: string, payloadFile: string): Promise<void> {
  const write = await writerFor(writer);
  const data = fs.readFileSync(payloadFile);
  const second = fs.existsSync(secondPayload(payloadFile)) ? fs.readFileSync(secondPayload(payloadFile)) : undefined;
  try {
    await write(target, data, second);
    process.stdout.write(`${JSON.stringify({ ok: true })}\n`);
  } catch (error) {
    const failure = error as NodeJS.ErrnoException & { published?: boolean; renamed?: string[] };
    const { code, message, published, renamed } = failure;
    const result = { ok: false, code, message, published, renamed };
    process.stdout.write(`${JSON.stringify(result)}\n`);
  }
}

/** Writes until killed; sizes vary from a few bytes to 256 KiB so kills land in every step. */
async function loop(writer: Writer, target: string, id: number, seed: number): Promise<void> {
  const write = await writerFor(writer);
  const random = prng(seed);
  for (let n = 1; n < 1_000_000; n++) {
    const size = Math.floor(16 * 2 ** (random() * 14));
    await write(target, makePayload(id * 1_000_000 + n, size));
  }
}

const args = process.argv.slice(2);
if (args[0] === "--loop") {
  await loop(args[1] as Writer, args[2] as string, Number(args[3]), Number(args[4] ?? 1));
} else {
  await once(args[0] as Writer, args[1] as string, args[2] as string);
}

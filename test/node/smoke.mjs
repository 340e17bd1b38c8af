// Smoke test of the Node.js build (dist/index.js, made by `npm run build:node`), run with the
// machine's `node` by `npm run test:node`. Plain ESM on purpose: it must run without Bun or a
// TypeScript loader. Prints one line per check and a summary; exits 1 if any check failed.
import assert from "node:assert/strict";
import * as fs from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { fileURLToPath, pathToFileURL } from "node:url";

const built = new URL("../../dist/index.js", import.meta.url);
const results = [];

async function check(name, body) {
  try {
    await body();
    results.push({ name, ok: true });
    console.log(`ok      ${name}`);
  } catch (error) {
    results.push({ name, ok: false });
    console.log(
      `FAILED  ${name}\n        ${String(error?.stack ?? error)
        .split("\n")
        .join("\n        ")}`,
    );
  }
}

/** The error a promise rejects with (or a sync function throws); fails when there is none. */
async function failureOf(action) {
  try {
    await action();
  } catch (error) {
    return error;
  }
  throw new assert.AssertionError({ message: "expected a failure, but the call succeeded" });
}

if (!fs.existsSync(fileURLToPath(built))) {
  console.log(`FAILED  ${fileURLToPath(built)} does not exist: run \`npm run build:node\` first`);
  process.exit(1);
}
const lib = await import(built.href);
const dir = fs.mkdtempSync(join(tmpdir(), "atomic-write-node-smoke-"));
const temps = () => fs.readdirSync(dir).filter((name) => name.startsWith(".") && name.endsWith(".tmp"));

try {
  await check(`runs under Node ${process.version} without Bun`, () => {
    assert.equal(typeof process.versions.bun, "undefined");
    assert.ok(Number(process.versions.node.split(".")[0]) >= 20, "Node.js >= 20 is supported");
  });

  await check("exports every function, and the specification's names as the very same objects", () => {
    for (const name of [
      "atomicWriteText",
      "atomicWriteBytes",
      "atomicWriteTextAsync",
      "atomicWriteBytesAsync",
      "atomicWriteStream",
    ]) {
      assert.equal(typeof lib[name], "function", name);
    }
    assert.equal(lib.atomic_write_text, lib.atomicWriteText);
    assert.equal(lib.atomic_write_bytes, lib.atomicWriteBytes);
  });

  await check("the package name resolves, through package.json exports, to this very build", async () => {
    // A package may import itself by name: Node applies `exports` with its own conditions (not "bun").
    const byName = await import("atomic-write");
    assert.equal(byName.atomicWriteText, lib.atomicWriteText);
  });

  await check("atomicWriteText writes text exactly, with the mode asked for", () => {
    const path = join(dir, "text.txt");
    lib.atomicWriteText(path, "héllo\r\nwörld 😀", { mode: 0o640 });
    assert.equal(fs.readFileSync(path, "utf8"), "héllo\r\nwörld 😀");
    assert.equal(fs.statSync(path).mode & 0o7777, 0o640);
    lib.atomicWriteText(path, "replaced", { encoding: "utf16le" });
    assert.deepEqual(fs.readFileSync(path), Buffer.from("replaced", "utf16le"));
    assert.equal(fs.statSync(path).mode & 0o7777, 0o640, "an existing file keeps its mode");
  });

  await check("atomicWriteBytes writes bytes from a Uint8Array, an ArrayBuffer and a file: URL path", () => {
    const path = join(dir, "bytes.bin");
    const bytes = Uint8Array.from({ length: 300_000 }, (_, i) => (i * 7) & 0xff);
    lib.atomicWriteBytes(path, bytes);
    assert.deepEqual(new Uint8Array(fs.readFileSync(path)), bytes);
    lib.atomicWriteBytes(pathToFileURL(path), bytes.buffer.slice(0, 10));
    assert.deepEqual(new Uint8Array(fs.readFileSync(path)), bytes.subarray(0, 10));
  });

  await check("the async variants write, and settle in call order", async () => {
    const path = join(dir, "async.txt");
    const settled = [];
    await Promise.all([
      lib.atomicWriteTextAsync(path, "first").then(() => settled.push(1)),
      lib.atomicWriteBytesAsync(path, Buffer.from("second")).then(() => settled.push(2)),
      lib.atomicWriteTextAsync(path, "third", { durable: false }).then(() => settled.push(3)),
    ]);
    assert.deepEqual(settled, [1, 2, 3]);
    assert.equal(fs.readFileSync(path, "utf8"), "third");
  });

  await check("atomicWriteStream writes an async generator, a Node Readable and a web ReadableStream", async () => {
    const path = join(dir, "stream.txt");
    async function* lines() {
      for (let i = 0; i < 1000; i++) yield `line ${i}\n`;
    }
    const expected = Array.from({ length: 1000 }, (_, i) => `line ${i}\n`).join("");
    await lib.atomicWriteStream(path, lines());
    assert.equal(fs.readFileSync(path, "utf8"), expected);
    await lib.atomicWriteStream(path, Readable.from([Buffer.from("from "), Buffer.from("a Readable")]));
    assert.equal(fs.readFileSync(path, "utf8"), "from a Readable");
    await lib.atomicWriteStream(path, Readable.toWeb(Readable.from([Buffer.from("web stream")])));
    assert.equal(fs.readFileSync(path, "utf8"), "web stream");
  });

  await check("atomicWriteStream rejects with the source's own error and leaves the target intact", async () => {
    const path = join(dir, "stream-fails.txt");
    fs.writeFileSync(path, "kept");
    const thrown = new Error("source broke");
    async function* broken() {
      yield "partial";
      throw thrown;
    }
    assert.equal(await failureOf(() => lib.atomicWriteStream(path, broken())), thrown);
    assert.equal(fs.readFileSync(path, "utf8"), "kept");
  });

  await check("a missing directory fails with ENOENT naming the path", async () => {
    const path = join(dir, "no-such-dir", "file.txt");
    for (const attempt of [() => lib.atomicWriteText(path, "x"), () => lib.atomicWriteTextAsync(path, "x")]) {
      const error = await failureOf(attempt);
      assert.equal(error.code, "ENOENT");
      assert.ok(error.message.includes(path), error.message);
    }
  });

  await check("a directory as the target fails with EISDIR and stays a directory", async () => {
    const path = join(dir, "a-directory");
    fs.mkdirSync(path);
    for (const attempt of [
      () => lib.atomicWriteBytes(path, Buffer.from("x")),
      () => lib.atomicWriteBytesAsync(path, Buffer.from("x")),
    ]) {
      const error = await failureOf(attempt);
      assert.equal(error.code, "EISDIR");
      assert.ok(error.message.includes(path), error.message);
    }
    assert.ok(fs.statSync(path).isDirectory());
  });

  await check(
    "bad arguments throw TypeError/RangeError (sync) or reject (async) before touching the disk",
    async () => {
      const path = join(dir, "never.txt");
      assert.equal((await failureOf(() => lib.atomicWriteText(path, 42))).name, "TypeError");
      assert.equal((await failureOf(() => lib.atomicWriteBytes(path, "not bytes"))).name, "TypeError");
      assert.equal((await failureOf(() => lib.atomicWriteText(path, "x", { mode: 0o10000 }))).name, "RangeError");
      let promise;
      assert.doesNotThrow(() => {
        promise = lib.atomicWriteTextAsync(path, 42);
      }, "the async variant rejects rather than throwing");
      assert.equal((await failureOf(() => promise)).name, "TypeError");
      assert.equal(fs.existsSync(path), false);
    },
  );

  await check("a buffer transferred away, before the call or while the write waits, is a TypeError", async () => {
    const path = join(dir, "kept.txt");
    fs.writeFileSync(path, "kept");
    const transfer = (memory) => structuredClone(memory, { transfer: [memory] });
    const gone = new ArrayBuffer(8);
    transfer(gone);
    assert.equal((await failureOf(() => lib.atomicWriteBytes(path, gone))).name, "TypeError");
    const view = new Uint8Array(10).fill(65);
    const pending = lib.atomicWriteBytesAsync(path, view);
    transfer(view.buffer); // Node 20 has no ArrayBuffer.prototype.detached to tell it by
    assert.equal((await failureOf(() => pending)).name, "TypeError");
    assert.equal(fs.readFileSync(path, "utf8"), "kept");
  });

  await check("no temp file is left behind by any of the above", () => {
    assert.deepEqual(temps(), []);
  });
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}

const failed = results.filter((result) => !result.ok);
console.log(`\nNode smoke test of dist/index.js: ${results.length - failed.length} passed, ${failed.length} failed`);
process.exit(failed.length === 0 ? 0 : 1);

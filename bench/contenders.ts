/**
 * Everyone the bench measures, each with its default options, behind one call shape.
 */
import * as fs from "node:fs";
import { writeFile as atomicallyWrite, writeFileSync as atomicallyWriteSync } from "atomically";
import fastWriteAtomic from "fast-write-atomic";
import { Writer as StenoWriter } from "steno";
import writeFileAtomic from "write-file-atomic";
import { atomicWriteBytes, atomicWriteBytesAsync, atomicWriteText, atomicWriteTextAsync } from "../index.ts";
import { loadFloor } from "./floor.ts";
import { planWrite, straightWrite } from "./straight.ts";

/** What a scenario writes: text, bytes, or the same content both ways (small writes). */
export interface Payload {
  kind: "text" | "bytes" | "both";
  text?: string;
  /** The bytes; for a text payload, its UTF-8 encoding (what the C floor, which has no strings, is fed). */
  bytes: Uint8Array;
}

export type Family = "atomic-write" | "peer" | "not durable" | "floor";

export interface Contender {
  id: string;
  label: string;
  family: Family;
  api: "sync" | "async";
  /** "text" and "bytes" run only on payloads of that kind; "any" takes the text when there is one. */
  feeds: "text" | "bytes" | "any" | "floor";
  /** Does it fsync the file (and the directory)? For the report's notes. */
  durability: string;
  /** One write; a promise for the async APIs (awaited by the bench). */
  write(path: string, payload: Payload): unknown;
}

const textOf = (payload: Payload): string => payload.text as string;
const dataOf = (payload: Payload): string | Uint8Array => payload.text ?? payload.bytes;
const stenoWriters = new Map<string, StenoWriter>();

export const CONTENDERS: Contender[] = [
  {
    id: "aw-sync-text",
    label: "atomic-write atomicWriteText",
    family: "atomic-write",
    api: "sync",
    feeds: "text",
    durability: "fsync file + dir",
    write: (path, payload) => atomicWriteText(path, textOf(payload)),
  },
  {
    id: "aw-sync-bytes",
    label: "atomic-write atomicWriteBytes",
    family: "atomic-write",
    api: "sync",
    feeds: "bytes",
    durability: "fsync file + dir",
    write: (path, payload) => atomicWriteBytes(path, payload.bytes),
  },
  {
    id: "aw-async-text",
    label: "atomic-write atomicWriteTextAsync",
    family: "atomic-write",
    api: "async",
    feeds: "text",
    durability: "fsync file + dir",
    write: (path, payload) => atomicWriteTextAsync(path, textOf(payload)),
  },
  {
    id: "aw-async-bytes",
    label: "atomic-write atomicWriteBytesAsync",
    family: "atomic-write",
    api: "async",
    feeds: "bytes",
    durability: "fsync file + dir",
    write: (path, payload) => atomicWriteBytesAsync(path, payload.bytes),
  },
  {
    id: "aw-sync-named",
    label: "atomic-write atomicWriteBytes, named temp",
    family: "atomic-write",
    api: "sync",
    feeds: "bytes",
    durability: "fsync file + dir",
    // The library reads the variable on every write; setting and deleting it around the call costs
    // about 1 µs here (measured), which this row carries and the others do not.
    write: (path, payload) => {
      const before = process.env.ATOMIC_WRITE_TMPFILE;
      process.env.ATOMIC_WRITE_TMPFILE = "0";
      try {
        atomicWriteBytes(path, payload.bytes);
      } finally {
        if (before === undefined) delete process.env.ATOMIC_WRITE_TMPFILE;
        else process.env.ATOMIC_WRITE_TMPFILE = before;
      }
    },
  },
  {
    id: "aw-sync-nodurable",
    label: "atomic-write atomicWriteBytes durable:false",
    family: "not durable",
    api: "sync",
    feeds: "bytes",
    durability: "none (atomic only)",
    write: (path, payload) => atomicWriteBytes(path, payload.bytes, { durable: false }),
  },
  {
    id: "wfa-sync",
    label: "write-file-atomic sync",
    family: "peer",
    api: "sync",
    feeds: "any",
    durability: "fsync file",
    write: (path, payload) => writeFileAtomic.sync(path, dataOf(payload)),
  },
  {
    id: "wfa-async",
    label: "write-file-atomic async",
    family: "peer",
    api: "async",
    feeds: "any",
    durability: "fsync file",
    write: (path, payload) => writeFileAtomic(path, dataOf(payload)),
  },
  {
    id: "atomically-sync",
    label: "atomically writeFileSync",
    family: "peer",
    api: "sync",
    feeds: "any",
    durability: "fsync file",
    write: (path, payload) => atomicallyWriteSync(path, dataOf(payload)),
  },
  {
    id: "atomically-async",
    label: "atomically writeFile",
    family: "peer",
    api: "async",
    feeds: "any",
    durability: "fsync file",
    write: (path, payload) => atomicallyWrite(path, dataOf(payload)),
  },
  {
    id: "fast-write-atomic",
    label: "fast-write-atomic",
    family: "peer",
    api: "async",
    feeds: "any",
    durability: "fsync file",
    write: (path, payload) => fastWriteAtomic.promise(path, dataOf(payload)),
  },
  {
    id: "steno",
    label: "steno Writer.write",
    family: "peer",
    api: "async",
    feeds: "any",
    durability: "none (atomic only)",
    write: (path, payload) => {
      let writer = stenoWriters.get(path);
      if (!writer) {
        writer = new StenoWriter(path);
        stenoWriters.set(path, writer);
      }
      return writer.write(dataOf(payload));
    },
  },
  {
    id: "fs-writeFileSync",
    label: "fs.writeFileSync",
    family: "not durable",
    api: "sync",
    feeds: "any",
    durability: "none, not atomic",
    write: (path, payload) => fs.writeFileSync(path, dataOf(payload)),
  },
  {
    id: "bun-write",
    label: "Bun.write",
    family: "not durable",
    api: "async",
    feeds: "any",
    durability: "none, not atomic",
    write: (path, payload) => Bun.write(path, dataOf(payload)),
  },
  {
    id: "floor",
    label: "C floor, named temp (bun:ffi)",
    family: "floor",
    api: "sync",
    feeds: "floor",
    durability: "fsync file + dir",
    write: (path, payload) => loadFloor().named(path, payload.bytes),
  },
  {
    id: "floor-tmpfile",
    label: "C floor, O_TMPFILE (bun:ffi)",
    family: "floor",
    api: "sync",
    feeds: "floor",
    durability: "fsync file + dir",
    write: (path, payload) => loadFloor().tmpfile(path, payload.bytes),
  },
  {
    id: "ts-straight",
    label: "TypeScript, O_TMPFILE, straight-line (bun:ffi)",
    family: "floor",
    api: "sync",
    feeds: "floor",
    durability: "fsync file + dir",
    write: (path, payload) => straightWrite(path, payload.bytes),
  },
  {
    id: "ts-straight-named",
    label: "TypeScript, named temp, straight-line (bun:ffi)",
    family: "floor",
    api: "sync",
    feeds: "floor",
    durability: "fsync file + dir",
    write: (path, payload) => straightWrite(path, payload.bytes, "named"),
  },
  {
    id: "ts-plan",
    label: "TypeScript, O_TMPFILE, one generator plan (bun:ffi)",
    family: "floor",
    api: "sync",
    feeds: "floor",
    durability: "fsync file + dir",
    write: (path, payload) => planWrite(path, payload.bytes),
  },
  {
    id: "ts-plan-named",
    label: "TypeScript, named temp, one generator plan (bun:ffi)",
    family: "floor",
    api: "sync",
    feeds: "floor",
    durability: "fsync file + dir",
    write: (path, payload) => planWrite(path, payload.bytes, "named"),
  },
  {
    id: "ts-plan-text",
    label: "TypeScript, O_TMPFILE, one generator plan, string (bun:ffi)",
    family: "floor",
    api: "sync",
    feeds: "text",
    durability: "fsync file + dir",
    write: (path, payload) => planWrite(path, textOf(payload)),
  },
  {
    id: "ts-straight-text",
    label: "TypeScript, O_TMPFILE, straight-line, string (bun:ffi)",
    family: "floor",
    api: "sync",
    feeds: "text",
    durability: "fsync file + dir",
    write: (path, payload) => straightWrite(path, textOf(payload)),
  },
];

export function contender(id: string): Contender {
  const found = CONTENDERS.find((c) => c.id === id);
  if (!found) throw new Error(`no contender ${id}`);
  return found;
}

/** The contenders that can write this payload (the floor only where it was built). */
export function contendersFor(kind: Payload["kind"], withFloor: boolean): Contender[] {
  return CONTENDERS.filter((c) => {
    if (c.feeds === "floor") return withFloor;
    if (c.feeds === "text") return kind !== "bytes";
    if (c.feeds === "bytes") return kind !== "text";
    return true;
  });
}

/**
 * Interleaved rounds: every contender is measured once per round, in an order rotated from round to
 * round, with a GC and a `sync` (untimed) before each batch. A contender's ratio is taken against the
 * baseline measured in the same round, so a machine that slows down between rounds (other jobs, page
 * cache writeback) shifts both sides of a ratio together; the report gives medians over rounds.
 */
import { spawnSync } from "node:child_process";
import { measure } from "mitata";

export interface Entry {
  id: string;
  /** One operation (a write); awaited when it returns a promise. */
  run: () => unknown;
}

export interface RoundOptions {
  rounds: number;
  /** Least time spent on one contender in one round, in milliseconds. */
  budgetMs: number;
  /** Least samples per contender per round (a sample is one call, or a small batch of fast calls). */
  minSamples: number;
  /** Called untimed after each batch, e.g. to remove what the writes left. */
  afterBatch?: () => void;
  onProgress?: (text: string) => void;
}

/** Nanoseconds per operation, per contender id, one number per round. */
export type RoundTimes = Map<string, number[]>;

export function settle(): void {
  Bun.gc(true);
  spawnSync("sync");
}

export async function interleave(entries: Entry[], options: RoundOptions): Promise<RoundTimes> {
  const times: RoundTimes = new Map(entries.map((e) => [e.id, []]));
  for (let round = 0; round < options.rounds; round++) {
    const order = rotate(entries, round);
    for (const entry of order) {
      settle();
      const stats = await measure(entry.run, {
        min_samples: options.minSamples,
        min_cpu_time: options.budgetMs * 1e6,
        // Fast calls are timed in batches of 16 so a sample is far above the clock's resolution,
        // yet a batch stays short enough that many fit in the budget for a robust median.
        batch_samples: 16,
        batch_unroll: 4,
        warmup_samples: 2,
        // GC and sync happen between batches, under our control, not inside mitata's loop.
        gc: false,
      });
      times.get(entry.id)?.push(stats.p50);
      options.afterBatch?.();
    }
    options.onProgress?.(`round ${round + 1}/${options.rounds}`);
  }
  return times;
}

export function rotate<T>(items: T[], by: number): T[] {
  if (items.length === 0) return [];
  const shift = by % items.length;
  return [...items.slice(shift), ...items.slice(0, shift)];
}

export function median(values: number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 === 1
    ? (sorted[middle] as number)
    : ((sorted[middle - 1] as number) + (sorted[middle] as number)) / 2;
}

/** The median over rounds of `times[id] / times[baseline]` (a time ratio: below 1 is faster). */
export function medianRatio(times: RoundTimes, id: string, baseline: string): number {
  const mine = times.get(id);
  const base = times.get(baseline);
  if (!mine || !base) return Number.NaN;
  const ratios = mine.map((t, i) => t / (base[i] as number)).filter(Number.isFinite);
  return median(ratios);
}

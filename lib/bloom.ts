import { randomInt } from 'node:crypto';

/**
 * A fixed-size Bloom filter of strings: "maybe seen" or "certainly not seen", in constant memory.
 * The audit verifier (services/auditor/verify.ts) keeps the ids of ended executions here instead of
 * in a set that would grow with the history; a "maybe" is then confirmed exactly by reading the
 * stream again. A rebuild of the read models keeps the keys of the rows it touched
 * (services/projector/sql.ts, `SoleWriterRows`); a "maybe" is read from the table.
 *
 * With the default 2 MiB (16 Mi bits) and 7 probes the false-positive rate stays below 1e-6 up to
 * about 350,000 ended executions, is about 5e-4 at 1 million and 2 % at 2 million; a false positive
 * costs one extra read of the stream, never a wrong verdict.
 */
export class BloomFilter {
  private readonly bits: Uint8Array;
  private readonly size: number;
  /**
   * Seeds of the two hashes, drawn for each filter: the values come from stored events, and a
   * history written to collide with a known hash could only make its audit slow (every "maybe" is
   * read again), but not with hashes it cannot know.
   */
  private readonly seed1 = randomInt(2 ** 32 - 1) >>> 0;
  private readonly seed2 = randomInt(2 ** 32 - 1) >>> 0;

  constructor(
    bytes: number = 2 * 1024 * 1024,
    private readonly probes: number = 7,
  ) {
    this.bits = new Uint8Array(bytes);
    this.size = bytes * 8;
  }

  add(value: string): void {
    const h1 = hash32(value, this.seed1);
    const h2 = hash32(value, this.seed2) | 1;
    for (let k = 0; k < this.probes; k++) {
      const i = ((h1 + Math.imul(k, h2)) >>> 0) % this.size;
      this.bits[i >>> 3]! |= 1 << (i & 7);
    }
  }

  /** Double hashing (Kirsch-Mitzenmacher) over two seeded 32-bit hashes of the value. */
  mightContain(value: string): boolean {
    const h1 = hash32(value, this.seed1);
    const h2 = hash32(value, this.seed2) | 1;
    for (let k = 0; k < this.probes; k++) {
      const i = ((h1 + Math.imul(k, h2)) >>> 0) % this.size;
      if ((this.bits[i >>> 3]! & (1 << (i & 7))) === 0) return false;
    }
    return true;
  }
}

/**
 * A seeded 32-bit hash of a string's UTF-16 code units: FNV-1a's loop, then murmur3's finalizer so
 * that every input bit reaches every output bit. Not cryptographic (SHA-256 cost the verifier more
 * than the rest of its per-event bookkeeping); a filter only needs its probes spread evenly.
 */
function hash32(value: string, seed: number): number {
  let h = (0x811c9dc5 ^ seed) >>> 0;
  for (let i = 0; i < value.length; i++) {
    h ^= value.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

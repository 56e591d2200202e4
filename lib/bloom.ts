import { hash } from 'node:crypto';

/**
 * A fixed-size Bloom filter of strings: "maybe seen" or "certainly not seen", in constant memory.
 * The audit verifier (services/auditor/verify.ts) keeps the ids of ended executions here instead of
 * in a set that would grow with the history; a "maybe" is then confirmed exactly by reading the
 * stream again. A rebuild of the read models keeps the keys of the rows it wrote
 * (services/projector/sql.ts, `SoleWriterRows`); a "maybe" is read from the table.
 *
 * With the default 2 MiB (16 Mi bits) and 7 probes the false-positive rate stays below 1e-6 up to
 * about 1 million ended executions and below 2 % at 2 million; a false positive costs one extra
 * read of the stream, never a wrong verdict.
 */
export class BloomFilter {
  private readonly bits: Uint8Array;
  private readonly size: number;

  constructor(
    bytes: number = 2 * 1024 * 1024,
    private readonly probes: number = 7,
  ) {
    this.bits = new Uint8Array(bytes);
    this.size = bytes * 8;
  }

  add(value: string): void {
    for (const i of this.indexes(value)) this.bits[i >>> 3]! |= 1 << (i & 7);
  }

  mightContain(value: string): boolean {
    for (const i of this.indexes(value)) if ((this.bits[i >>> 3]! & (1 << (i & 7))) === 0) return false;
    return true;
  }

  /** Double hashing (Kirsch-Mitzenmacher) over two 32-bit words of the value's SHA-256. */
  private *indexes(value: string): Generator<number> {
    const digest = hash('sha256', value, 'buffer');
    const h1 = digest.readUInt32BE(0);
    const h2 = digest.readUInt32BE(4) | 1;
    for (let k = 0; k < this.probes; k++) yield ((h1 + Math.imul(k, h2)) >>> 0) % this.size;
  }
}

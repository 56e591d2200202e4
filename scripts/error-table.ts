/** Prints the errors table of docs/dispatcher.md from contracts/errors.ts's catalogue. */
import { errorTableMarkdown } from '../contracts/errors.ts';

process.stdout.write(`${errorTableMarkdown()}\n`);

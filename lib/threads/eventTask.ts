/** The task module of the event threads (lib/threads/events.ts): what each worker runs. */
export { handleEventTask as handle } from './events.ts';

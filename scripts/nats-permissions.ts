/** `npm run nats:permissions`: the table of what each Toolbus identity may do on NATS (docs/security.md). */
import { permissionTable } from './nats-auth.ts';

console.log(permissionTable());

/**
 * A Cloudflare Worker (a workerd module worker) serving the edge handler. The handler imports
 * "@flash/attention", which under the `workerd` condition (set by Wrangler, and by build.ts here)
 * is npm/workerd.ts: it takes the kernels from the raw `.wasm` import, a `WebAssembly.Module` that
 * workerd compiled at load time, so no `init()` call is needed and no bytes are compiled at run
 * time (workerd forbids that).
 *
 * @module
 */
import { createHandler } from "../edge/handler.ts";

export default { fetch: createHandler() };

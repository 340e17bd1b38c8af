/**
 * Preloaded by bunfig.toml before every test file. The fault tests mount file systems, spawn
 * compiled binaries and run children under strace: on a slow or busy machine that can take longer
 * than bun's default of 5 s per test. (bunfig's own `[test] timeout` key is not read by Bun 1.4.4:
 * a 6 s test still timed out at 5 s with it set.)
 */
import { setDefaultTimeout } from "bun:test";

setDefaultTimeout(60_000);

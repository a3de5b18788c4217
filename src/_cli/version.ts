// The package's version, as a constant: the tool reads no files at run time (it runs from JSR and
// npm alike). tests/cli_test.ts checks it against deno.json's and package.json's "version".

/** The version of @flash/attention that `flash-attention --version` prints. */
export const VERSION = "0.1.0";

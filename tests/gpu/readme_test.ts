// The README's WebGPU example, run verbatim: the ```ts block of its "On the GPU: WebGPU" section is
// written as it is to a module inside the repository (so "@flash/attention/gpu" resolves to this
// package by its own name) and run by a Deno child with no permissions. It must print what its
// comment says.

import { gpuTest } from "./_gpu.ts";

const root = new URL("../../", import.meta.url);

gpuTest("the README's WebGPU example runs verbatim, with no permissions, and prints what it says", async () => {
  const readme = await Deno.readTextFile(new URL("README.md", root));
  const heading = "\n### On the GPU: WebGPU\n";
  const start = readme.indexOf(heading);
  if (start < 0) throw new Error("the README has no WebGPU section");
  const end = readme.indexOf("\n#", start + heading.length);
  const blocks = [...readme.slice(start, end).matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]);
  if (blocks.length !== 1) throw new Error(`expected one example, found ${blocks.length}`);
  const source = blocks[0];
  if (!source.includes('from "@flash/attention/gpu"')) throw new Error("the example does not import the GPU entry");
  const promise = /console\.log\([^\n]*\/\/ (.*)$/m.exec(source);
  if (!promise) throw new Error("the example has no console.log with a comment saying what it prints");
  const dir = new URL(".scratch/readme/", root);
  await Deno.mkdir(dir, { recursive: true });
  const path = new URL("gpu.ts", dir);
  await Deno.writeTextFile(path, source);
  const child = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--no-prompt", path.pathname],
    cwd: root.pathname,
    env: { NO_COLOR: "1" },
    stdin: "null",
  }).output();
  const text = new TextDecoder();
  const [stdout, stderr] = [text.decode(child.stdout), text.decode(child.stderr)];
  if (child.code !== 0) throw new Error(`the example failed (${child.code}):\n${stdout}\n${stderr}`);
  // Without colour codes (a FORCE_COLOR in the parent's environment beats NO_COLOR) and whitespace.
  // deno-lint-ignore no-control-regex
  const normalise = (s: string) => s.replace(/\x1b\[[0-9;]*m/g, "").replace(/\s+/g, "");
  if (normalise(stdout) !== normalise(promise[1])) {
    throw new Error(`the example printed ${JSON.stringify(stdout)}, the README says ${JSON.stringify(promise[1])}`);
  }
});

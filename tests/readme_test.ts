// The README's usage example, run verbatim: the code blocks of its "Use" section are written, as
// they are, to a module inside the repository (so that "@flash/attention" resolves to this package
// by its own name: package.json's and deno.json's exports) and run in a child process of the
// runtime running this test. `npm test` runs the suite on Node, Deno and Bun, so the example runs
// on all three. The output must be what the README's comment says it prints.

import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { test } from "./_util.ts";

const root = fileURLToPath(new URL("../", import.meta.url));

/** The ```ts blocks of the README section whose heading is `heading`, up to the next heading of any level. */
function codeBlocks(heading: string): string[] {
  const readme = readFileSync(`${root}README.md`, "utf8");
  const start = readme.indexOf(`\n${heading}\n`);
  if (start < 0) throw new Error(`README has no section "${heading}"`);
  const end = readme.indexOf("\n#", start + heading.length + 2);
  const section = readme.slice(start, end < 0 ? undefined : end);
  return [...section.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]);
}

/** Runs a module of this repository in the current runtime; returns its stdout. */
function runHere(path: string): string {
  // deno-lint-ignore no-explicit-any
  const runtime = globalThis as any;
  // Plain text: no colours, whatever the parent's environment asks for.
  const env = { ...process.env, NO_COLOR: "1", FORCE_COLOR: "0" };
  let status: number | null, stdout: string, stderr: string;
  if (runtime.Deno) {
    // Deno.Command, not node:child_process: Deno gives a child started through the latter every
    // permission, and the example must run with none.
    const child = new runtime.Deno.Command(runtime.Deno.execPath(), {
      args: ["run", "--no-prompt", path],
      cwd: root,
      env,
      stdin: "null",
    }).outputSync();
    const text = new TextDecoder();
    [status, stdout, stderr] = [child.code, text.decode(child.stdout), text.decode(child.stderr)];
  } else {
    const args = runtime.Bun ? [path] : ["--import", "tsx", path];
    const child = spawnSync(process.execPath, args, { cwd: root, encoding: "utf8", timeout: 120_000, env });
    if (child.error) throw child.error;
    [status, stdout, stderr] = [child.status, child.stdout, child.stderr];
  }
  if (status !== 0) throw new Error(`the README example failed (status ${status}):\n${stdout}\n${stderr}`);
  return stdout;
}

test("the README's usage example runs verbatim, importing the package by its name, and prints what it says", () => {
  const blocks = codeBlocks("## Use");
  if (blocks.length < 2) throw new Error(`expected the usage example and the reference import, got ${blocks.length}`);
  const source = blocks.join("\n");
  if (!source.includes('from "@flash/attention"')) throw new Error("the example does not import the package by name");
  // What the example says it prints: the comment on its console.log line.
  const promise = /console\.log\([^\n]*\/\/ (.*)$/m.exec(source);
  if (!promise) throw new Error("the example has no console.log with a comment saying what it prints");
  const dir = `${root}.scratch/readme`;
  mkdirSync(dir, { recursive: true });
  const path = `${dir}/use.ts`;
  writeFileSync(path, source);
  const printed = runHere(path);
  // Compared without white space and without any colour escapes a runtime may still print.
  // deno-lint-ignore no-control-regex
  const normalise = (text: string) => text.replace(/\u001b\[[0-9;]*m/g, "").replace(/\s+/g, "");
  if (normalise(printed) !== normalise(promise[1])) {
    throw new Error(`the example printed ${JSON.stringify(printed)}, the README says ${JSON.stringify(promise[1])}`);
  }
});

test("every relative link and image of the README and the examples' READMEs names a file that exists and JSR publishes", () => {
  const deno = JSON.parse(readFileSync(`${root}deno.json`, "utf8"));
  const include: string[] = deno.publish.include;
  const exclude: string[] = deno.publish.exclude ?? [];
  // publish.include entries are files or folders ("dir/"); excludes here are "dir/**/*_suffix" globs.
  const published = (path: string) =>
    include.some((entry) => entry.endsWith("/") ? path.startsWith(entry) : path === entry) &&
    !exclude.some((glob) => {
      const [dir, suffix] = glob.split("/**/*");
      return path.startsWith(`${dir}/`) && path.endsWith(suffix);
    });
  const readmes = [
    "README.md",
    ...readdirSync(`${root}examples`, { recursive: true }).map(String)
      .filter((f) => f.endsWith("README.md")).map((f) => `examples/${f}`),
  ];
  let checked = 0;
  for (const readme of readmes) {
    const text = readFileSync(`${root}${readme}`, "utf8");
    const base = readme.includes("/") ? readme.slice(0, readme.lastIndexOf("/") + 1) : "";
    const targets = [...text.matchAll(/\]\(([^)\s]+)\)|src="([^"]+)"/g)].map((m) => m[1] ?? m[2]);
    for (const target of targets) {
      if (/^[a-z]+:/.test(target) || target.startsWith("#")) continue;
      const path = new URL(target.split("#")[0], `file:///${base}`).pathname.slice(1);
      if (!existsSync(`${root}${path}`)) throw new Error(`${readme} links to ${target}, which does not exist`);
      if (!published(path.endsWith("/") ? path : statSync(`${root}${path}`).isDirectory() ? `${path}/` : path)) {
        throw new Error(
          `${readme} links to ${target}, which deno.json's publish.include leaves out of the JSR package`,
        );
      }
      checked++;
    }
  }
  if (checked < 10) throw new Error(`only ${checked} relative links found: is the pattern still right?`);
});

// What a `.wasm` import is where bundlers and workerd load it: a precompiled module.
declare module "*.wasm" {
  const module: WebAssembly.Module;
  export default module;
}

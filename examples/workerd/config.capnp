# workerd config of the example: one Worker, served on 127.0.0.1. The embed paths are relative to
# this file; build.ts copies it beside worker.js and kernels.wasm in .scratch/workerd/. The test
# picks the port with `--socket-addr http=127.0.0.1:<port>`.
using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [(name = "main", worker = .worker)],
  sockets = [(name = "http", address = "127.0.0.1:8787", http = (), service = "main")],
);

const worker :Workerd.Worker = (
  modules = [
    (name = "worker.js", esModule = embed "worker.js"),
    # the kernels: workerd compiles them when it loads the Worker and hands worker.js a WebAssembly.Module
    (name = "kernels.wasm", wasm = embed "kernels.wasm"),
  ],
  compatibilityDate = "2026-11-01",
);

"""PyTorch's fp32 scaled_dot_product_attention on the GPU, the native reference for bench/gpu.ts.

Same problem as the WebGPU benchmark: B = 1, H = 8, d = 64, q, k, v of shape [B, H, N, d] in fp32
(TF32 off, so the products are true fp32), causal and not. Prints one JSON object per line:
{"N": ..., "causal": ..., "ms": median, "tflops": 4·B·H·N²·d (half if causal) / time, "backend": ...}.
CUDA events time each call after warm-up; the fastest of three medians of `--repeats` calls each is
reported (bench/gpu.ts's rule for its own kernels).

    python3 bench/probes/torch_sdpa.py --n 1024 4096 16384 --repeats 20
"""
import argparse
import json

import torch
import torch.nn.functional as F


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device("cuda")
    print(json.dumps({"device": torch.cuda.get_device_name(0), "torch": torch.__version__}))
    for n in args.n:
        shape = (1, args.heads, n, args.dim)
        q, k, v = (torch.rand(shape, device=device) * 2 - 1 for _ in range(3))
        for causal in (False, True):
            for _ in range(3):
                F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            # As bench/gpu.ts times its own kernels: the fastest median of three groups of calls.
            medians = []
            for _ in range(3):
                times = []
                for _ in range(args.repeats):
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                    end.record()
                    torch.cuda.synchronize()
                    times.append(start.elapsed_time(end))
                times.sort()
                medians.append(times[len(times) // 2])
            ms = min(medians)
            flops = 4 * args.heads * n * n * args.dim * (0.5 if causal else 1)
            print(json.dumps({"N": n, "causal": causal, "ms": ms, "tflops": flops / ms / 1e9}))


if __name__ == "__main__":
    main()

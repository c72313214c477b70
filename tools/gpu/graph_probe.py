"""What CUDA graphs and channels-last would give the evaluation pass, measured on the
reference's own network in PyTorch before building either into advent (BENCHMARKS.md).

    python3 tools/gpu/graph_probe.py [FOLDER_OF_torch_reference.py]
"""
import json, sys, time
import torch
import torch.nn.functional as F
sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else "../shared/bench")
import torch_reference as r

torch.backends.cudnn.benchmark = True

def timeit(f, n=30, warm=5):
    for _ in range(warm):
        f()
    torch.cuda.synchronize()
    ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); torch.cuda.synchronize(); ts.append(time.perf_counter() - t)
    ts.sort()
    return round(1e3 * ts[len(ts) // 2], 2)

for dtype in ["tf32", "bf16"]:
    for cl in [False, True]:
        torch.manual_seed(0)
        m = r.DeepLabV2().cuda().eval()
        x = torch.randn(1, 3, 512, 1024, device="cuda")
        if cl:
            m = m.to(memory_format=torch.channels_last)
            x = x.to(memory_format=torch.channels_last)
        def f():
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bf16", cache_enabled=False):
                return F.interpolate(m(x)[1], size=(1024, 2048), mode="bilinear", align_corners=True).argmax(1)
        eager = timeit(f)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                f()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = f()
        g.replay()
        ref = f()
        same = bool((out == ref).float().mean() > 0.999)
        graphed = timeit(g.replay)
        print(json.dumps({"what": "eval-512x1024-upsampled-x2", "dtype": dtype, "channels_last": cl, "eager_ms": eager,
                          "graph_ms": graphed, "graph_output_agrees": same}), flush=True)

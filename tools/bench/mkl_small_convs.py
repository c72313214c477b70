"""Times SSD's six extra convolutions at batch 1, forward and backward (the last three, on
maps of 10x10 and smaller, run through MKL's products: `MKL_VERBOSE=1` lists their SGEMM
calls; the first three go to oneDNN) and a 1024x1024 product, for BENCHMARKS.md's row on
MKL's reproducible mode. Run in alternation:
    .venv/bin/python tools/bench/mkl_small_convs.py
    MKL_CBWR=AUTO .venv/bin/python tools/bench/mkl_small_convs.py
"""
import torch, time, statistics, os
torch.set_num_threads(2)
torch.manual_seed(0)
# SSD's extra layers at batch 1; the last three (inputs of up to 12800 values) use MKL's products
convs = [torch.nn.Conv2d(1024, 256, 1), torch.nn.Conv2d(256, 512, 3, 2, 1), torch.nn.Conv2d(512, 128, 1),
         torch.nn.Conv2d(128, 256, 3, 2, 1), torch.nn.Conv2d(256, 128, 1), torch.nn.Conv2d(128, 256, 3)]
sizes = [19, 19, 10, 10, 5, 5]
xs = [torch.randn(1, c.in_channels, s, s, requires_grad=True) for c, s in zip(convs, sizes)]
def step():
    for c, x in zip(convs, xs):
        c(x).sum().backward()
for _ in range(5): step()
ts = []
for _ in range(60):
    t = time.perf_counter(); step(); ts.append(time.perf_counter() - t)
mm = torch.randn(1024, 1024)
for _ in range(3): mm @ mm
tm = []
for _ in range(30):
    t = time.perf_counter(); mm @ mm; tm.append(time.perf_counter() - t)
print(repr(os.environ.get('MKL_CBWR', 'unset')), f'extras fwd+bwd {statistics.median(ts)*1e3:.2f} ms  1024^3 product {statistics.median(tm)*1e3:.2f} ms')

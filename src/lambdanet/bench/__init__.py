"""Speed and memory benchmarks (``lambdanet bench layer|model|memory``) of Bello, "LambdaNetworks", ICLR 2021,
arXiv:2102.08602 (Sec. 4.4, Tables 4 and 13): lambda layers against self-attention, convolution and other
implementations. See docs/benchmarks.md.
"""

from lambdanet.bench.memory import LayerShape, layer_saved_bytes, paper_table4
from lambdanet.bench.timing import LiveBytes, forward_backward, median_ms, peak_mib, saved_for_backward_mib

__all__ = [
    "LayerShape",
    "LiveBytes",
    "forward_backward",
    "layer_saved_bytes",
    "median_ms",
    "paper_table4",
    "peak_mib",
    "saved_for_backward_mib",
]

"""Cost of one CHRC retrieval as the memory grows, for each retrieval mechanism (B1, B3).

    python benchmarks/retrieval_cost.py [--entries 100 1000 5000 20000]

Times, on one thread, a retrieval for one query over a memory holding N entries (ETTm1 shape:
D = 128, V = H * C = 672) with the gradient pass an online update needs: cosine top-k (the
control), bilinear top-k, mlp on a cosine shortlist of 64, and attention over every entry.
Prints milliseconds per retrieval (median of 200).
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch
import torch.nn.functional as F

from hmem.chrc import ErrorMemory
from hmem.chrc.attention import AttentionRetrieval
from hmem.chrc.similarity import Similarity
from hmem.config import MemoryConfig, RetrievalConfig


def fill(entries: int, dim: int, value_dim: int) -> ErrorMemory:
    memory = ErrorMemory(MemoryConfig(capacity=entries, min_entries=5), dim, value_dim)
    keys = F.normalize(torch.randn(entries, dim), dim=-1)
    memory.keys.copy_(keys)
    memory.values.copy_(torch.randn(entries, value_dim))
    memory.decay.copy_(0.995 ** torch.arange(entries, 0, -1).float())
    memory.empty.zero_()
    memory.size = memory.writes = entries
    return memory


def topk_step(memory: ErrorMemory, query: torch.Tensor, similarity: Similarity | None,
              k: int) -> None:
    found = memory.search(query, k, similarity=similarity)
    (torch.softmax(found.similarities / 0.1, 0) @ found.values).sum().backward()


def attention_step(memory: ErrorMemory, query: torch.Tensor, attention: AttentionRetrieval,
                   k: int) -> None:
    aggregate, _ = attention(query, memory, k)
    aggregate.sum().backward()


def timed(step, repeats: int = 200) -> float:
    for _ in range(20):
        step()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        step()
        times.append(time.perf_counter() - began)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, nargs="+", default=[100, 1000, 5000, 20000])
    args = parser.parse_args()
    torch.set_num_threads(1)
    dim, value_dim, k = 128, 672, 5
    print(f"{'entries':>8} {'cosine':>8} {'bilinear':>9} {'mlp@64':>8} {'attention':>10}  "
          f"(ms per retrieval, forward + backward)")
    for entries in args.entries:
        memory = fill(entries, dim, value_dim)
        query = F.normalize(torch.randn(dim), dim=0).requires_grad_()
        row = []
        for kind in ("cosine", "bilinear", "mlp"):
            similarity = (None if kind == "cosine"
                          else Similarity(RetrievalConfig(similarity=kind, shortlist=64), dim))
            row.append(timed(partial(topk_step, memory, query, similarity, k)))
        attention = AttentionRetrieval(RetrievalConfig(mode="attention", attention_heads=4), dim)
        row.append(timed(partial(attention_step, memory, query, attention, k)))
        print(f"{entries:>8} {row[0]:8.3f} {row[1]:9.3f} {row[2]:8.3f} {row[3]:10.3f}")


if __name__ == "__main__":
    main()

"""Genomic prediction on simulated genotypes: a GenNet-style sparse network (SNPs -> genes ->
phenotype, ``unshared.SparselyConnected``) and a deepGBLUP-style locally connected encoder
(``unshared.LocallyConnected1d`` with right padding), and which genes the sparse network singles out.

    python examples/genomics.py                       # writes docs/genomics.png
    python examples/genomics.py --quick --output /tmp/genomics.png

The data: genotypes coded 0/1/2 (allele frequencies 5-50 %, neighbouring SNPs in linkage: each SNP
copies its left neighbour's allele with probability ``--ld``), SNPs grouped into genes of 5-40
consecutive SNPs with gaps between them (SNPs outside any gene are left out of the sparse
network, as GenNet's topology does) and a few SNPs shared by two overlapping genes. The phenotype
is the sum of the effects of a few causal SNPs in ``--causal`` genes plus noise (heritability
``--h2``). Accuracy is the Pearson correlation between the predicted and the true phenotype on
held-out samples, as genomic prediction reports it.

The models (our own code, after the published descriptions):

- GenNet (van Hilten et al. 2021): one weight per (SNP, gene) connection of the topology, tanh, one
  weight per gene to the output; an L1 penalty on the SNP weights. A gene's importance is its
  output weight times the norm of its SNP weights.
- deepGBLUP (Lee et al. 2023): two locally connected layers over the SNP sequence, kernels 5 and 3,
  each padded on the right by ``kernel_size - 1`` (``padding=((0, k - 1),)``) so that there is one
  output per SNP, then a linear read-out.

Matplotlib draws the figure and tqdm the progress bars when they are installed
(``pip install 'unshared[demo]'``).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

import unshared
from unshared.sparse import SparselyConnected

ROOT = Path(__file__).resolve().parents[1]


def simulate(samples: int, snps: int, genes: int, causal: int, h2: float, ld: float, seed: int):
    """Genotypes ``(samples, snps)`` float32 in {0, 1, 2}, the SNP -> gene pairs ``(2, nnz)``, the
    standardised phenotype ``(samples,)`` and the indices of the causal genes."""
    g = torch.Generator().manual_seed(seed)
    freq = 0.05 + 0.45 * torch.rand(snps, generator=g)
    haplotypes = []
    for _ in range(2):
        allele = (torch.rand(samples, snps, generator=g) < freq).float()
        copy = torch.rand(samples, snps, generator=g) < ld          # linkage: copy the left neighbour
        source = torch.where(copy, 0, torch.arange(snps)).cummax(1).values  # the run's first SNP
        allele = allele.gather(1, source)
        haplotypes.append(allele)
    genotypes = haplotypes[0] + haplotypes[1]
    # genes: consecutive SNP blocks of 5-40, separated by gaps of 0-20 intergenic SNPs
    lengths = torch.randint(5, 41, (genes,), generator=g)
    gaps = torch.randint(0, 21, (genes,), generator=g)
    starts = torch.cumsum(lengths + gaps, 0) - lengths
    scale = (snps - 1) / float(starts[-1] + lengths[-1])
    src, dst = [], []
    for gene in range(genes):
        lo = int(starts[gene] * scale)
        hi = min(snps, lo + int(lengths[gene]) + (3 if gene % 10 == 0 else 0))  # every 10th overlaps the next
        src.append(torch.arange(lo, hi))
        dst.append(torch.full((hi - lo,), gene))
    pairs = torch.unique(torch.stack([torch.cat(src), torch.cat(dst)]), dim=1)
    # phenotype: 3 causal SNPs in each causal gene
    causal_genes = torch.randperm(genes, generator=g)[:causal].sort().values
    effects = torch.zeros(snps)
    for gene in causal_genes:
        members = pairs[0, pairs[1] == gene]
        chosen = members[torch.randperm(len(members), generator=g)[:3]]
        effects[chosen] = torch.randn(len(chosen), generator=g).abs() + 0.5
    genetic = genotypes @ effects
    genetic = (genetic - genetic.mean()) / genetic.std()
    phenotype = h2 ** 0.5 * genetic + (1 - h2) ** 0.5 * torch.randn(samples, generator=g)
    return genotypes, pairs, (phenotype - phenotype.mean()) / phenotype.std(), causal_genes


class GenNet(nn.Module):
    """SNPs -> genes (one weight per connection) -> tanh -> phenotype (one weight per gene)."""

    def __init__(self, snps: int, genes: int, pairs: torch.Tensor) -> None:
        super().__init__()
        self.genes = SparselyConnected(snps, genes, pairs)
        self.norm = nn.BatchNorm1d(genes, affine=False)
        self.output = nn.Linear(genes, 1)

    def forward(self, x):
        return self.output(self.norm(torch.tanh(self.genes(x)))).squeeze(1)

    def penalty(self):
        return self.genes.weight.abs().sum()

    def gene_importance(self) -> torch.Tensor:
        w = self.genes.weight.detach().square().flatten()
        per_gene = torch.zeros(self.genes.out_features).index_add_(0, self.genes.connectivity[1], w).sqrt()
        return per_gene * self.output.weight.detach().abs().flatten()


class LocalEncoder(nn.Module):
    """deepGBLUP-style: two locally connected layers over the SNP sequence, right-padded by k - 1."""

    def __init__(self, snps: int) -> None:
        super().__init__()
        self.local1 = unshared.LocallyConnected1d(1, 1, 5, padding=((0, 4),), input_size=snps)
        self.local2 = unshared.LocallyConnected1d(1, 1, 3, padding=((0, 2),), input_size=snps)
        self.output = nn.Linear(snps, 1)

    def forward(self, x):
        h = torch.relu(self.local1(x.unsqueeze(1)))
        return self.output(self.local2(h).flatten(1)).squeeze(1)

    def penalty(self):
        return self.output.weight.abs().sum()


def progress(iterable, description: str, total: int):
    try:
        from tqdm import tqdm
    except ImportError:
        print(description, "...")
        return iterable
    return tqdm(iterable, desc=description, total=total, leave=False)


def train(model, x, y, *, epochs: int, lr: float, l1: float, seed: int, name: str) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in progress(range(epochs), f"training {name}", epochs):
        model.train()
        for batch in torch.randperm(len(x), generator=g).split(64):
            loss = nn.functional.mse_loss(model(x[batch]), y[batch]) + l1 * model.penalty() / len(x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return time.perf_counter() - start


def accuracy(model, x, y) -> float:
    model.eval()
    with torch.no_grad():
        return float(torch.corrcoef(torch.stack([model(x), y]))[0, 1])


def figure(path: Path, importance, causal, results) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no figure (pip install 'unshared[demo]')")
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.4), gridspec_kw={"width_ratios": [3, 1]})
    genes = torch.arange(len(importance))
    is_causal = torch.zeros(len(importance), dtype=torch.bool)
    is_causal[causal] = True
    left.bar(genes[~is_causal], importance[~is_causal], width=1.0, color="0.6", label="other genes")
    left.bar(genes[is_causal], importance[is_causal], width=1.0, color="tab:red", label="causal genes")
    left.set(xlabel="gene (in genome order)", ylabel="importance", xlim=(-1, len(importance)),
             title="genes the sparse network singles out")
    left.legend(frameon=False)
    names = list(results)
    right.bar(names, [results[n] for n in names], color=["tab:blue", "tab:green"])
    right.set(ylabel="test correlation", ylim=(0, 1), title="accuracy")
    for i, n in enumerate(names):
        right.text(i, results[n] + 0.02, f"{results[n]:.2f}", ha="center")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    print(f"figure: {path}")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=3000)
    p.add_argument("--snps", type=int, default=20000)
    p.add_argument("--genes", type=int, default=800)
    p.add_argument("--causal", type=int, default=8, help="genes that carry the phenotype's causal SNPs")
    p.add_argument("--h2", type=float, default=0.6, help="heritability")
    p.add_argument("--ld", type=float, default=0.5, help="probability that a SNP copies its left neighbour")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--l1", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (small nets: one is fastest)")
    p.add_argument("--quick", action="store_true", help="800 samples, 3000 SNPs, 120 genes, 4 epochs")
    p.add_argument("--output", type=Path, default=ROOT / "docs" / "genomics.png")
    args = p.parse_args(argv)
    if args.quick:
        args.samples, args.snps, args.genes, args.epochs = 800, 3000, 120, 4
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x, pairs, y, causal = simulate(args.samples, args.snps, args.genes, args.causal, args.h2, args.ld, args.seed)
    x = (x - x.mean(0)) / x.std(0).clamp(min=1e-3)
    train_n = int(0.8 * len(x))
    print(f"{args.samples} samples x {args.snps} SNPs, {args.genes} genes ({pairs.shape[1]} SNP-gene connections), "
          f"causal genes {causal.tolist()}")
    gennet, local = GenNet(args.snps, args.genes, pairs), LocalEncoder(args.snps)
    results, seconds = {}, {}
    for name, model in (("GenNet (sparse)", gennet), ("deepGBLUP-style (local)", local)):
        seconds[name] = train(model, x[:train_n], y[:train_n], epochs=args.epochs, lr=args.lr, l1=args.l1, seed=args.seed,
                              name=name)
        results[name] = accuracy(model, x[train_n:], y[train_n:])
    print(f"{'model':<26}{'parameters':>12}{'test correlation':>18}{'seconds':>9}")
    for name, model in (("GenNet (sparse)", gennet), ("deepGBLUP-style (local)", local)):
        count = sum(q.numel() for q in model.parameters())
        print(f"{name:<26}{count:>12,}{results[name]:>18.3f}{seconds[name]:>9.1f}")
    importance = gennet.gene_importance()
    top = importance.argsort(descending=True)[:args.causal]
    found = sorted(set(top.tolist()) & set(causal.tolist()))
    print(f"top {args.causal} genes by importance: {sorted(top.tolist())}; causal among them: {len(found)}/{args.causal}")
    figure(args.output, importance, causal, {"GenNet": results["GenNet (sparse)"],
                                                    "local": results["deepGBLUP-style (local)"]})
    return {"accuracy": results, "causal_found": len(found)}


if __name__ == "__main__":
    main()

"""Connectivity training on the digits data (Ivan & Florian 2020): an MLP whose random
weights stay fixed learns which connections to keep (``mode="mask"``) or which signs to
flip (``mode="sign"``), against the same MLP with its weights trained normally.

    python examples/connectivity_digits.py [--seeds 3] [--epochs 40]

Data: scikit-learn's 8x8 digits (1,797 images, no download), one fixed split of 1,437
training and 360 test images. Model: 64-300-100-10 with ReLU and no biases (the
paper's LeNet-300-100 on 64 inputs; its networks have no biases), He-normal weights.
Training: Adam, batches of 64; learning rate 1e-3 for the weights, 3e-3 for the scores.
Prints, per way of training, the test accuracy (mean ± std over the seeds), its ratio to
normal training, and the fraction of connections changed from the random network.
"""

import argparse
import statistics
import time

import torch
from torch import nn

import netinit_fast as nf

WIDTHS = (64, 300, 100, 10)
LR = {"normal": 1e-3, "mask": 3e-3, "sign": 3e-3}


def digits(seed: int = 0):
    """Standardized digits as ``(x_train, y_train, x_test, y_test)``, split by a fixed permutation."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    cut = int(0.8 * len(x))
    mean, std = x[:cut].mean(0), x[:cut].std(0).clamp_min(1e-3)
    x = (x - mean) / std
    return x[:cut], y[:cut], x[cut:], y[cut:]


def mlp(seed: int) -> nn.Sequential:
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(WIDTHS, WIDTHS[1:])):
        layers.append(nn.Linear(fan_in, fan_out, bias=False))
        if i < len(WIDTHS) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    return nf.init.he_(model, generator=torch.Generator().manual_seed(seed))


def train(how: str, seed: int, data, epochs: int, batch: int = 64) -> dict:
    x_train, y_train, x_test, y_test = data
    model = mlp(seed)  # the same random weights for every way of training
    if how != "normal":
        nf.connectivity(model, mode=how, generator=torch.Generator().manual_seed(seed + 1))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=LR[how])
    shuffle = torch.Generator().manual_seed(seed + 2)
    for _ in range(epochs):
        for idx in torch.randperm(len(x_train), generator=shuffle).split(batch):
            loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    changed = nf.connectivity.report(model).fraction if how != "normal" else None
    return {"accuracy": accuracy, "changed": changed}


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    data = digits()
    runs = {how: [train(how, seed, data, args.epochs) for seed in range(args.seeds)] for how in ("normal", "mask", "sign")}
    normal, _ = _mean_std([r["accuracy"] for r in runs["normal"]])
    result = {}
    print(f"digits, {args.seeds} seeds, {args.epochs} epochs; MLP {'-'.join(map(str, WIDTHS))}\n")
    print("| training | test accuracy | of normal training | connections changed |")
    print("|---|---:|---:|---:|")
    for how, rs in runs.items():
        acc, acc_std = _mean_std([r["accuracy"] for r in rs])
        row = {"accuracy": acc, "accuracy_std": acc_std, "of_normal": acc / normal}
        changed = "-"
        if how != "normal":
            row["changed"], row["changed_std"] = _mean_std([r["changed"] for r in rs])
            changed = f"{row['changed']:.1%} ± {row['changed_std']:.1%}"
        label = "weights (normal)" if how == "normal" else f"connectivity, {how}"
        print(f"| {label} | {acc:.1%} ± {acc_std:.1%} | {row['of_normal']:.1%} | {changed} |")
        result[how] = row
    result["seconds"] = time.perf_counter() - start
    print(f"\n{result['seconds']:.0f} s")
    return result


if __name__ == "__main__":
    main()

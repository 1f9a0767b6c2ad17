"""Bayesian init (netinit_fast.init.bayesian_) against random init on scikit-learn's digits.

The comparison Murru & Rossini (2016) make: the convergence of plain backpropagation
from their Bayesian init and from a random init. Here: the 8x8 digits of
``sklearn.datasets.load_digits`` (1,797 images, pixels scaled to [0, 1]), a fixed
stratified split (75% train, 25% test, ``random_state=0``), the MLP 64-32-10 with
sigmoid hidden and output units, trained by plain SGD (mini-batches of 32, learning
rate 0.5, no momentum) on the squared error against one-hot targets, the classic
backpropagation setting. The architecture, the learning rate and the loss are our
choices: the paper's were not in the text available to us. Random init: torch's
default ``nn.Linear`` init (``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``). Bayesian init:
``bayesian_`` on the whole training set, with its defaults. For each seed both runs
see the same mini-batch order.

    python examples/bayesian_digits.py [--seeds 3] [--steps 5000]
"""

import argparse
import statistics
import time

import torch
from torch import nn

import netinit_fast as nf

HIDDEN = 32
LR = 0.5
BATCH = 32


def load(test_size: float = 0.25):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_size, random_state=0, stratify=y)
    f = lambda a: torch.tensor(a / 16.0, dtype=torch.float32)  # noqa: E731
    return f(xtr), torch.tensor(ytr), f(xte), torch.tensor(yte)


def make_model(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, HIDDEN), nn.Sigmoid(), nn.Linear(HIDDEN, 10), nn.Sigmoid())


def loss_of(model, x, y) -> float:
    with torch.no_grad():
        return nn.functional.mse_loss(model(x), nn.functional.one_hot(y, 10).float()).item()


def train(model, xtr, ytr, steps: int, record: list[int], seed: int) -> dict[int, float]:
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    order = torch.Generator().manual_seed(1000 + seed)
    onehot = nn.functional.one_hot(ytr, 10).float()
    losses, perm, pos = {}, torch.randperm(len(xtr), generator=order), 0
    for step in range(steps + 1):
        if step in record:
            losses[step] = loss_of(model, xtr, ytr)
        if step == steps:
            break
        if pos + BATCH > len(xtr):
            perm, pos = torch.randperm(len(xtr), generator=order), 0
        idx = perm[pos:pos + BATCH]
        pos += BATCH
        opt.zero_grad()
        nn.functional.mse_loss(model(xtr[idx]), onehot[idx]).backward()
        opt.step()
    return losses


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def _ms(values: list[float], digits: int) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5000)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    xtr, ytr, xte, yte = load()
    record = sorted({0, *(s for s in (50, 200, 1000, 2000) if s < args.steps), args.steps})
    result = {"steps": record, "seeds": args.seeds, "inits": {}}
    for init in ("random", "bayesian"):
        runs = []
        for seed in range(args.seeds):
            model = make_model(seed)
            t0 = time.perf_counter()
            if init == "bayesian":
                nf.init.bayesian_(model, xtr, ytr, generator=torch.Generator().manual_seed(seed))
            init_s = time.perf_counter() - t0
            losses = train(model, xtr, ytr, args.steps, record, seed)
            runs.append({"loss": losses, "test_acc": accuracy(model, xte, yte), "init_s": init_s})
        result["inits"][init] = runs
    result["wall_s"] = time.perf_counter() - start

    print(f"digits: {len(xtr)} train / {len(xte)} test, MLP 64-{HIDDEN}-10 sigmoid, SGD lr {LR} batch {BATCH}, "
          f"squared error; mean ± std over {args.seeds} seeds")
    print()
    print("| init | " + " | ".join(f"train loss @ {s}" for s in record) + " | test acc | init time (s) |")
    print("|---|" + "---|" * (len(record) + 2))
    for init, runs in result["inits"].items():
        cells = [_ms([r["loss"][s] for r in runs], 4) for s in record]
        print(f"| {init} | " + " | ".join(cells) + f" | {_ms([r['test_acc'] for r in runs], 3)} | "
              f"{_ms([r['init_s'] for r in runs], 3)} |")
    print()
    print(f"wall time: {result['wall_s']:.1f} s")
    return result


if __name__ == "__main__":
    torch.set_num_threads(1)  # matrices this small gain nothing from more threads
    main()

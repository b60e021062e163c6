"""The hand-made baseline: plain PyTorch transfer learning, the classic loop.

ResNet-18 frozen, fc replaced, SGD momentum 0.9, CyclicLR triangular2 (1e-6..1e-2), batch 32,
10 epochs, 224 px, flips + small rotation; the backbone runs on every image every epoch.

    .venv/bin/python bench/baseline_train.py DATA_DIR WEIGHTS.pth

Prints one JSON line: val accuracy (last and best epoch), images seen, seconds.
"""

from __future__ import annotations

import json
import sys
import time

import torch
from torch import nn
from torchvision import datasets, models, transforms


def main(data_dir: str, weights: str, epochs: int = 10) -> None:
    started = time.perf_counter()
    torch.manual_seed(0)
    normalize = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    train_tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(224),
            transforms.RandomHorizontalFlip(),
            transforms.RandomRotation(10),
            transforms.ToTensor(),
            normalize,
        ]
    )
    val_tf = transforms.Compose(
        [transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), normalize]
    )
    train_set = datasets.ImageFolder(f"{data_dir}/train", train_tf)
    val_set = datasets.ImageFolder(f"{data_dir}/val", val_tf)
    train_loader = torch.utils.data.DataLoader(
        train_set, batch_size=32, shuffle=True, num_workers=2
    )
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=32, num_workers=2)

    model = models.resnet18(num_classes=6)  # the scenes weights have a 6-way fc
    model.load_state_dict(torch.load(weights, weights_only=True))
    for p in model.parameters():
        p.requires_grad = False
    model.fc = nn.Linear(model.fc.in_features, len(train_set.classes))
    optimizer = torch.optim.SGD(model.fc.parameters(), lr=1e-2, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CyclicLR(
        optimizer, base_lr=1e-6, max_lr=1e-2, step_size_up=2 * len(train_loader), mode="triangular2"
    )
    loss_fn = nn.CrossEntropyLoss()
    accuracies = []
    seen = 0
    for _epoch in range(epochs):
        model.train()
        for x, y in train_loader:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            scheduler.step()
            seen += len(y)
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in val_loader:
                correct += int((model(x).argmax(1) == y).sum())
                total += len(y)
                seen += len(y)
        accuracies.append(correct / total)
        print(f"epoch {_epoch + 1}: val acc {accuracies[-1]:.3f}", file=sys.stderr, flush=True)
    print(
        json.dumps(
            {
                "val_accuracy": accuracies[-1],
                "best_val_accuracy": max(accuracies),
                "images": seen,
                "seconds": time.perf_counter() - started,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

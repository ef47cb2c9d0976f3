"""A box verifier score (`task_options.score = "verifier"`): a departure from the paper, documented in
docs/method.md#detection.

The learned head (score_head.py) reads what the decoder's token distributions say about a box; measured on
the faint world, that bounds it (a reference MLE model's distributions of the same tokens add nothing). The
verifier looks at the image again: each box's crop (the box grown CONTEXT times about its centre, resampled
to CROP x CROP from the model's input) and the class it claims go through a small convolutional network,
trained like the head on the model's own greedy and sampled boxes of training images with their COCO targets
(IoU with the ground truth matched at 0.5, 0 for a false positive or a duplicate: `iou_conf_targets`). It is
a second stage in the manner of two-stage detectors, fitted on what this model emits.

The fitted weights are a dict of lists kept in the task state (saved with every checkpoint), so `eval`,
`predict` and `score` (which reads the written detections) rank with the same score. Fitting draws from its
own generator only (resume stays exact).
"""
from __future__ import annotations

import base64
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .score_head import generated, spearman

CROP = 24  # crop side in pixels
CONTEXT = 2.0  # a crop spans the box grown this many times about its centre
MIN_SIDE = 1.0 / 32  # boxes thinner than this (of the image side) are cropped as this wide


def box_crops(images: torch.Tensor, boxes: Sequence[np.ndarray]) -> torch.Tensor:
    """images FloatTensor[B, 3, S, S]; boxes[b]: float[k_b, 4] (ymin, xmin, ymax, xmax in [0, 1]) of image b ->
    FloatTensor[sum k_b, 3, CROP, CROP], each box grown CONTEXT times about its centre (zeros outside)."""
    thetas, owner = [], []
    for b, bx in enumerate(boxes):
        for y0, x0, y1, x1 in np.asarray(bx, np.float64).reshape(-1, 4):
            h, w = max(y1 - y0, MIN_SIDE) * CONTEXT, max(x1 - x0, MIN_SIDE) * CONTEXT
            thetas.append([[w, 0.0, x0 + x1 - 1.0], [0.0, h, y0 + y1 - 1.0]])  # output [-1, 1] -> input coords
            owner.append(b)
    if not owner:
        return torch.zeros(0, images.shape[1], CROP, CROP)
    source = images.detach().float().cpu()[torch.tensor(owner)]
    grid = F.affine_grid(torch.tensor(thetas, dtype=torch.float32), [len(owner), source.shape[1], CROP, CROP],
                         align_corners=False)
    return F.grid_sample(source, grid, align_corners=False, padding_mode="zeros")


class VerifierNet(nn.Module):
    """(crops FloatTensor[k, 3, CROP, CROP], classes LongTensor[k]) -> logits FloatTensor[k]. The crop's feature map
    is kept whole (6 x 6 cells, not pooled): where the object's edges lie against the box is what it reads."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.convs = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                                   nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                   nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Flatten(),
                                   nn.Linear(64 * (CROP // 4) ** 2, 128), nn.ReLU())
        self.classes = nn.Embedding(num_classes, 32)
        self.head = nn.Sequential(nn.Linear(128 + 32, 128), nn.ReLU(), nn.Linear(128, 1))

    def forward(self, crops: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.convs(crops), self.classes(classes)], 1)).squeeze(1)


def to_state(net: VerifierNet, logs: dict) -> dict:
    """The fitted net as a JSON-serialisable dict (the task state's "verifier"): each tensor as its shape and its
    float32 bytes in base64 (about 1.5 MB for the ~380k weights)."""
    weights = {k: {"shape": list(v.shape), "float32": base64.b64encode(v.detach().float().cpu().numpy()
                                                                        .astype("<f4").tobytes()).decode("ascii")}
               for k, v in net.state_dict().items()}
    return {"num_classes": net.num_classes, "crop": CROP, "context": CONTEXT, **logs, "weights": weights}


def from_state(state: Optional[dict]) -> Optional[VerifierNet]:
    """The net of a saved state (None stays None)."""
    if state is None:
        return None
    net = VerifierNet(int(state["num_classes"]))
    weights = {k: torch.from_numpy(np.frombuffer(base64.b64decode(v["float32"]), dtype="<f4").copy()
                                   .reshape(v["shape"])) for k, v in state["weights"].items()}
    net.load_state_dict(weights)
    return net.eval()


@torch.no_grad()
def score_crops(net: VerifierNet, crops: torch.Tensor, classes: torch.Tensor, batch_size: int = 1024) -> np.ndarray:
    """float32[n] in (0, 1): the net's scores of n crops, a batch at a time (the activations of the whole fit set
    at once would take ~200 kB a crop: 10 GB for 50k boxes)."""
    return np.concatenate([torch.sigmoid(net(crops[i:i + batch_size], classes[i:i + batch_size])).numpy()
                           for i in range(0, len(crops), batch_size)] or [np.zeros(0)]).astype(np.float32)


def verifier_scores(net: VerifierNet, image: torch.Tensor, boxes: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """float32[k] in (0, 1): the net's scores of one image's k boxes (image FloatTensor[3, S, S])."""
    if len(boxes) == 0:
        return np.zeros(0, np.float32)
    return score_crops(net, box_crops(image[None], [boxes]), torch.as_tensor(np.asarray(classes), dtype=torch.long))


def fit_verifier(crops: torch.Tensor, classes: torch.Tensor, targets: torch.Tensor, num_classes: int, seed: int = 0,
                 epochs: int = 8, batch_size: int = 256, lr: float = 2e-3, flip: bool = True) -> tuple[VerifierNet, dict]:
    """Fit by cross-entropy against soft targets in [0, 1] (AdamW, one-cycle schedule), each crop of a batch mirrored
    left-right at random when `flip` (a box's IoU does not change in a mirror); deterministic for a seed, never
    touching the global RNG. -> (net in eval mode, {"loss": last epoch's mean})."""
    if len(crops) == 0 or len(crops) != len(classes) or len(crops) != len(targets):
        raise ValueError(f"fit_verifier: need as many crops, classes and targets (> 0), got {len(crops)}, "
                         f"{len(classes)}, {len(targets)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = VerifierNet(num_classes)
    gen = torch.Generator().manual_seed(seed)
    n = len(crops)
    steps = epochs * ((n + batch_size - 1) // batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    y = targets.float().clamp(0, 1)
    loss_sum = 0.0
    with torch.enable_grad():
        net.train()
        for _ in range(epochs):
            order, loss_sum = torch.randperm(n, generator=gen), 0.0
            for start in range(0, n, batch_size):
                idx = order[start:start + batch_size]
                batch = crops[idx]
                if flip:
                    mirrored = torch.rand(len(idx), generator=gen) < 0.5
                    batch = torch.where(mirrored[:, None, None, None], batch.flip(-1), batch)
                loss = F.binary_cross_entropy_with_logits(net(batch, classes[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                schedule.step()
                loss_sum += float(loss.detach()) * len(idx)
    return net.eval(), {"loss": loss_sum / n}


def collect_crops(model, split, codec, indices: Sequence[int], samples: int, seed: int,
                  batch_size: int = 64) -> tuple[list, list, torch.Tensor]:
    """score_head.generated's outputs -> (outputs, targets, the crops of every output's boxes in order)."""
    outputs, targets, crops = [], [], []
    for images, n, decoded, tgt in generated(model, split, codec, indices, samples, seed, batch_size):
        outputs += decoded
        targets += tgt
        crops.append(box_crops(images.repeat_interleave(n, 0), [o["boxes"] for o in decoded]))
    return outputs, targets, torch.cat(crops) if crops else torch.zeros(0, 3, CROP, CROP)


def calibrate(model, split, codec, state: dict, iou_targets, images: int = 1024, samples: int = 4,
              seed: int = 0) -> dict:
    """Fit the verifier on the first `images` images of `split` (greedy + `samples` samples each) and install it:
    codec.verifier and state["verifier"]. -> logs (boxes used, fit Spearman, loss)."""
    indices = list(range(min(images, len(split))))
    outputs, targets, crops = collect_crops(model, split, codec, indices, samples, seed)
    if len(crops) == 0:
        return {"verifier_boxes": 0.0}
    truth = torch.from_numpy(np.concatenate(iou_targets(outputs, targets)))
    classes = torch.from_numpy(np.concatenate([o["classes"] for o in outputs])).long()
    net, logs = fit_verifier(crops, classes, truth, codec.num_classes, seed=seed)
    codec.verifier, state["verifier"] = net, to_state(net, logs)
    fitted = score_crops(net, crops, classes)
    return {"verifier_boxes": float(len(crops)), "verifier_fit_spearman": spearman(fitted, truth.numpy()),
            "verifier_loss": logs["loss"]}

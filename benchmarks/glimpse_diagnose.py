"""Diagnostics of the glimpse box source (issue 9; numbers in docs/glimpse.md).

Not a benchmark and not the method: (1) an untrained ink-window localiser on the subsampled
canvas (can the source see the digit?); (2) with a head trained on glimpses near the digit
(using the digit boxes, for this diagnostic only), the cosine between -dL/d(box corner) and the
direction to the digit, for the STN and the hyperlayer at several sigma gains.

Run: OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/glimpse_diagnose.py
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hypersparse.data import cluttered_set, digits
from hypersparse.experiments.glimpse import GlimpseHead, box_iou
from hypersparse.functional.glimpse import box_grid, gather_glimpse, sample_boxes
from hypersparse.nn import Glimpse


def can_the_source_see(canvas: int) -> None:
    val = cluttered_set(digits("mnist", "val"), canvas=canvas)
    x = val.float()
    for f in (4, 3, 2, 1):
        k = round(28 / f)
        s = F.avg_pool2d(x[..., ::f, ::f], k, stride=1)  # (B, 1, m, m): ink per window
        m = s.shape[-1]
        idx = s.flatten(1).argmax(1)
        top, left = (idx // m * f).float(), (idx % m * f).float()
        iou = box_iou(torch.stack([top, left, top + 27, left + 27], 1), val.boxes)
        print(f"{canvas}x{canvas} subsample {f}: ink-window IoU {iou.mean():.3f}, "
              f"IoU > 0.5: {(iou > 0.5).float().mean():.3f}")


def gradient_direction(canvas: int = 60, k: int = 20, extent: float = 27.0) -> None:
    torch.manual_seed(0)
    trn = cluttered_set(digits("mnist", "train"), canvas=canvas)
    val = cluttered_set(digits("mnist", "val"), canvas=canvas)
    xs, ys, bs = trn.float(), trn.labels, trn.boxes

    def boxes_at(tl: torch.Tensor) -> torch.Tensor:
        return torch.cat([tl, tl + extent], 1).unsqueeze(1)  # (B, 1, 4)

    head = GlimpseHead(1, 1, k)
    opt = torch.optim.Adam(head.parameters(), 1e-3)
    for _ in range(600):  # diagnostic head on glimpses within 6 px of the digit
        i = torch.randint(0, xs.shape[0], (64,))
        tl = (bs[i, :2].float() + (torch.rand(64, 2) * 2 - 1) * 6).clamp(0, canvas - 1 - extent)
        loss = F.cross_entropy(head(sample_boxes(xs[i], boxes_at(tl), (k, k))), ys[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    vx, vy, vb = val.float()[:500], val.labels[:500], val.boxes[:500]
    for off in (3, 6, 10, 16):
        ang = torch.rand(500) * 2 * math.pi
        tl = (vb[:, :2].float() + torch.stack([ang.sin(), ang.cos()], 1) * off).clamp(
            0, canvas - 1 - extent)
        truth = vb[:, :2].float() - tl
        res = []
        for name, gain in (("stn", None), ("hyper gain 1", 1.0), ("hyper gain 3", 3.0),
                           ("hyper gain 10", 10.0)):
            tlv = tl.clone().requires_grad_(True)
            if gain is None:
                g = sample_boxes(vx, boxes_at(tlv), (k, k))
            else:
                layer = Glimpse((1, canvas, canvas), k, region=8).train()
                layer.sigma_gain.fill_(gain)
                pts, w = layer._points(box_grid(boxes_at(tlv), (k, k)), True)
                g = gather_glimpse(vx, pts, w).reshape(500, 1, 1, k, k)
            grad, = torch.autograd.grad(F.cross_entropy(head(g), vy, reduction="sum"), tlv)
            cos = F.cosine_similarity(-grad, truth, dim=1)
            res.append(f"{name}: cos {cos.mean():.2f} (right way {(cos > 0).float().mean():.2f})")
        print(f"offset {off}: " + " | ".join(res))


if __name__ == "__main__":
    can_the_source_see(60)
    can_the_source_see(100)
    gradient_direction()

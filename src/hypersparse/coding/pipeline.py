"""The bag-of-visual-words / deep sparse coding feature pipeline (seed 004, "Deep Sparse Model").

Stages (each a function or a thin module, composed by the ``sparse-coding`` experiment):

1. **patches** -> **sparse codes**: :class:`SparseCodingLayer` encodes every ``p x p`` patch of
   a (B, C, H, W) map against a dictionary of ``C p^2``-dimensional atoms, giving a code map
   (B, M, H', W') -- a convolution whose "activation" is a lasso solve;
2. **local spatial max pooling** ``f: (Y, G) -> (Z, G')`` (:func:`local_max_pool`): the max of
   each code over a ``s x s`` neighbourhood (s = 4 gives the seed's ``max(y_i1 .. y_i16)``);
3. **dimensionality reduction** ``A(y) = W y`` per location, trained with the contrastive loss
   on pairs from :func:`spatial_pairs` (see :mod:`hypersparse.coding.contrastive`);
4. a second coding layer on the reduced map, pooling again, and a linear classifier.

Axis letters: B batch (images), C channels, H/W height/width, P patches per image, N patch size
``C p^2``, M atoms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ista import _check_alpha, lipschitz_constant, sparse_encode

__all__ = [
    "extract_patches",
    "local_max_pool",
    "spatial_pairs",
    "SparseCodingLayer",
]


def _check_map(x: Tensor, name: str = "x") -> None:
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(
            f"{name} must be a 4-D (B, C, H, W) tensor, got "
            f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}"
        )


def _check_size(name: str, v: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be an int >= 1, got {v!r}")


def extract_patches(x: Tensor, size: int, stride: int = 1) -> Tensor:
    """All ``size x size`` patches of each image, flattened channel-major (``C, dy, dx``).

    Shape:
        x: (B, C, H, W); returns (B, P, C * size * size) with
        ``P = ((H - size) // stride + 1) * ((W - size) // stride + 1)`` (row-major grid).

    Example:
        >>> extract_patches(torch.arange(16.0).view(1, 1, 4, 4), 2, 2)[0, 1]
        tensor([2., 3., 6., 7.])
    """
    _check_map(x)
    _check_size("size", size)
    _check_size("stride", stride)
    if size > x.shape[2] or size > x.shape[3]:
        raise ValueError(f"patch size {size} exceeds the map's {tuple(x.shape[2:])}")
    cols = F.unfold(x, size, stride=stride)  # (B, C*size*size, P)
    return cols.transpose(1, 2)  # (B, P, N)


def local_max_pool(codes: Tensor, size: int, stride: int | None = None,
                   absolute: bool = False) -> Tensor:
    """Local spatial max pooling of a code map: ``z = max(y_1, ..., y_{size^2})`` per window.

    With ``absolute`` the max is over ``|y|`` (the usual choice for signed codes, Yang et al.
    2009); for non-negative codes the two agree. ``size`` >= the map gives global pooling.

    Shape:
        codes: (B, M, H, W); returns (B, M, H', W'), ``H' = (H - s) // stride + 1`` with
        ``s = min(size, H)``.
    """
    _check_map(codes, "codes")
    _check_size("size", size)
    stride = size if stride is None else stride
    _check_size("stride", stride)
    y = codes.abs() if absolute else codes
    kh, kw = min(size, y.shape[2]), min(size, y.shape[3])
    return F.max_pool2d(y, (kh, kw), stride=stride)


def spatial_pairs(
    n_images: int,
    height: int,
    width: int,
    n_pairs: int,
    *,
    radius: int = 1,
    labels: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Pairs of cells of a (B, H, W) grid of pooled codes for the contrastive loss.

    Half the pairs are *similar* (``l = 0``): a cell and a different cell at most ``radius``
    away (Chebyshev) in the same image; half are *dissimilar* (``l = 1``): two cells of two
    different images. If ``labels`` is given, "different images" means images of different
    labels (supervised pairs); otherwise any other image (unsupervised).

    Returns:
        ``(i, j, l)``: flat indices into ``B * H * W`` (row-major ``b, h, w``) and the labels.

    Shape:
        i, j: (n_pairs,) int64; l: (n_pairs,) float.
    """
    for name, v in (("n_images", n_images), ("height", height), ("width", width),
                    ("n_pairs", n_pairs), ("radius", radius)):
        _check_size(name, v)
    if n_images < 2:
        raise ValueError(f"dissimilar pairs need n_images >= 2, got {n_images}")
    if height * width < 2:
        raise ValueError(f"similar pairs need at least 2 cells per image, got {height}x{width}")
    if labels is not None and labels.shape != (n_images,):
        raise ValueError(f"labels must have shape ({n_images},), got {tuple(labels.shape)}")
    n_sim = n_pairs // 2
    n_dis = n_pairs - n_sim

    def rand(high: int, n: int) -> Tensor:
        return torch.randint(high, (n,), generator=generator)

    # similar: a random non-zero in-bounds offset within the radius (rejection sampling)
    cells = height * width
    b = rand(n_images, n_sim)
    h, w = rand(height, n_sim), rand(width, n_sim)
    h2, w2 = h.clone(), w.clone()
    todo = torch.ones(n_sim, dtype=torch.bool)
    for _ in range(64):
        dh, dw = rand(2 * radius + 1, n_sim) - radius, rand(2 * radius + 1, n_sim) - radius
        ch, cw = h + dh, w + dw
        ok = ((dh != 0) | (dw != 0)) & (ch >= 0) & (ch < height) & (cw >= 0) & (cw < width)
        take = todo & ok
        h2, w2 = torch.where(take, ch, h2), torch.where(take, cw, w2)
        todo &= ~ok
        if not bool(todo.any()):
            break
    if bool(todo.any()):  # radius too small for a tiny grid: any other cell of the image
        other = (h * width + w + 1 + rand(cells - 1, n_sim)) % cells
        h2, w2 = torch.where(todo, other // width, h2), torch.where(todo, other % width, w2)
    i_sim = b * cells + h * width + w
    j_sim = b * cells + h2 * width + w2
    # dissimilar: two different images (different labels if given), random cells
    b1 = rand(n_images, n_dis)
    if labels is None:
        b2 = (b1 + 1 + rand(n_images - 1, n_dis)) % n_images
    else:
        b2 = rand(n_images, n_dis)
        for _ in range(100):  # resample collisions; classes are many, so this ends fast
            clash = labels[b1] == labels[b2]
            if not bool(clash.any()):
                break
            b2 = torch.where(clash, rand(n_images, n_dis), b2)
        keep = labels[b1] != labels[b2]
        b1, b2 = b1[keep], b2[keep]
    i_dis = b1 * cells + rand(cells, b1.numel())
    j_dis = b2 * cells + rand(cells, b2.numel())
    i = torch.cat([i_sim, i_dis])
    j = torch.cat([j_sim, j_dis])
    l = torch.cat([torch.zeros(n_sim), torch.ones(i_dis.numel())])
    return i, j, l


class SparseCodingLayer(nn.Module):
    """Patch-wise lasso coding of a feature map: a convolution whose activation is FISTA.

    The dictionary is a buffer (learn it with :func:`hypersparse.coding.learn_dictionary` on
    :func:`extract_patches` output and assign it with :meth:`set_dictionary`).

    Args:
        in_channels: C.
        n_atoms: M.
        patch_size: p (patches are ``C x p x p``, flattened channel-major).
        stride: patch stride.
        alpha: l1 weight (> 0).
        n_iter: FISTA iterations (a fixed budget, so the cost per image is fixed).
        nonneg: non-negative codes (the default: max pooling then needs no ``abs``).
        chunk: patches encoded at once (bounds memory).

    Shape:
        x: (B, C, H, W) -> codes (B, M, H', W'), ``H' = (H - p) // stride + 1``.

    Example:
        >>> layer = SparseCodingLayer(1, 16, 5, stride=2, alpha=0.1)
        >>> layer(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 16, 12, 12])
    """

    dictionary: Tensor

    def __init__(
        self,
        in_channels: int,
        n_atoms: int,
        patch_size: int,
        *,
        stride: int = 1,
        alpha: float = 0.1,
        n_iter: int = 30,
        nonneg: bool = True,
        chunk: int = 65536,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("n_atoms", n_atoms),
                        ("patch_size", patch_size), ("stride", stride), ("n_iter", n_iter),
                        ("chunk", chunk)):
            _check_size(name, v)
        self.in_channels, self.n_atoms = in_channels, n_atoms
        self.patch_size, self.stride = patch_size, stride
        self.alpha = _check_alpha(alpha)
        self.n_iter, self.nonneg, self.chunk = n_iter, bool(nonneg), chunk
        n = in_channels * patch_size * patch_size
        self.register_buffer("dictionary", torch.empty(n_atoms, n, device=device, dtype=dtype))
        self.reset_parameters()

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.patch_size * self.patch_size

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Random unit-norm atoms."""
        d = torch.randn(self.dictionary.shape, generator=generator, dtype=self.dictionary.dtype)
        self.dictionary.copy_(d / d.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def set_dictionary(self, dictionary: Tensor) -> None:
        """Copy in a learned (M, C p^2) dictionary."""
        if dictionary.shape != self.dictionary.shape:
            raise ValueError(
                f"dictionary must have shape {tuple(self.dictionary.shape)}, got "
                f"{tuple(dictionary.shape)}"
            )
        self.dictionary.copy_(dictionary)

    def patches(self, x: Tensor) -> Tensor:
        """The flattened patches this layer encodes: (B, P, C p^2)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x must be (B, C={self.in_channels}, H, W), got shape {tuple(x.shape)}"
            )
        return extract_patches(x, self.patch_size, self.stride)

    def encode(self, patches: Tensor) -> Tensor:
        """FISTA codes of flattened patches, in chunks: (R, N) -> (R, M)."""
        L = lipschitz_constant(self.dictionary)
        parts = [
            sparse_encode(patches[i : i + self.chunk], self.dictionary, self.alpha,
                          max_iter=self.n_iter, tol=0.0, nonneg=self.nonneg, lipschitz=L).codes
            for i in range(0, patches.shape[0], self.chunk)
        ]
        return torch.cat(parts) if parts else patches.new_zeros(0, self.n_atoms)

    def forward(self, x: Tensor) -> Tensor:
        B, _, H, W = x.shape
        hp = (H - self.patch_size) // self.stride + 1
        wp = (W - self.patch_size) // self.stride + 1
        p = self.patches(x).reshape(-1, self.patch_dim)  # (B*P, N)
        z = self.encode(p).reshape(B, hp, wp, self.n_atoms)  # (B, H', W', M)
        return z.permute(0, 3, 1, 2).contiguous()  # (B, M, H', W')

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, n_atoms={self.n_atoms}, "
                f"patch_size={self.patch_size}, stride={self.stride}, alpha={self.alpha}, "
                f"n_iter={self.n_iter}, nonneg={self.nonneg}")

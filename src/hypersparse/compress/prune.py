"""Pruning as reparametrisation with **bool** masks that keeps models small and copyable.

A pruned tensor (say ``layer.weight``) stays the *same* ``nn.Parameter`` under the same name, so
an optimizer built before pruning keeps working; next to it lives a bool buffer
``layer.weight_mask`` (True = kept). Three small picklable hooks enforce the mask:

- a forward pre-hook zeroes the pruned entries in place before every forward, so the forward
  always computes with the pruned weight;
- a gradient hook (re-attached lazily after ``deepcopy``/unpickling, which drop tensor hooks)
  zeroes the gradient of pruned entries, and a process-wide optimizer step post-hook
  (``torch.optim.optimizer.register_optimizer_step_post_hook``, registered at the first
  pruning) zeroes them again after every ``optimizer.step()``, so stale momentum cannot move
  them: pruned weights are exactly zero after every step;
- ``state_dict`` hooks store the tensor compactly: the kept values (1-d) plus the mask packed
  eight positions per byte (with one terminator bit per row, so the shape is recoverable
  without the module). When that is not smaller, the dense tensor is stored and the mask is
  left out (it is ``tensor != 0``). A pruned checkpoint is therefore never larger than the
  unpruned one, except in one corner documented in :func:`pack_mask`.

``copy.deepcopy``, ``pickle`` and strict ``load_state_dict`` work before and after
:func:`remove`, which makes pruning permanent (plain parameter, no buffer, no hooks).

Masks are cumulative: pruning an already pruned tensor ANDs the new mask into the old one.
"""

from __future__ import annotations

import copy
import math
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook

__all__ = [
    "apply_mask",
    "identity",
    "is_pruned",
    "get_mask",
    "remove",
    "remove_all",
    "pruned_tensors",
    "pack_mask",
    "unpack_mask",
    "dense_state_dict",
    "load_pruned_state_dict",
    "topk_mask",
    "threshold_mask",
    "magnitude_prune",
    "global_magnitude_prune",
    "global_prune",
    "structured_prune",
    "shrink",
    "cubic_sparsity",
    "GradualPruning",
    "sparsity",
]

MASK_SUFFIX = "_mask"
_ENTRY_BYTES = 320


# --------------------------------------------------------------------------- mask packing


def pack_mask(mask: Tensor) -> Tensor:
    """Pack a bool mask eight positions per byte, row by row, with a terminator bit.

    Each row (the last dimension, length ``n``) becomes ``n // 8 + 1`` bytes: the bits MSB
    first, then a single 1 bit right after the last position, then zeros. The terminator makes
    the original length recoverable, so :func:`unpack_mask` needs no shape. Cost:
    ``rows * (n // 8 + 1)`` bytes instead of ``rows * n`` for a bool tensor.

    Shape:
        mask: ``(*lead, n)`` bool (a 0-d mask is treated as ``(1,)``) -> ``(*lead, n // 8 + 1)``
        uint8.

    Example:
        >>> pack_mask(torch.tensor([True, False, True])).tolist()
        [176]
    """
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {getattr(mask, 'dtype', type(mask))}")
    if mask.dim() == 0:
        mask = mask.reshape(1)
    n = mask.shape[-1]
    nbytes = n // 8 + 1
    bits = torch.zeros(*mask.shape[:-1], nbytes * 8, dtype=torch.uint8, device=mask.device)
    bits[..., :n] = mask.to(torch.uint8)
    bits[..., n] = 1  # terminator
    bits = bits.reshape(*mask.shape[:-1], nbytes, 8)  # (*lead, nbytes, 8)
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=mask.device)
    return (bits * weights).sum(-1, dtype=torch.uint8)


def unpack_mask(packed: Tensor) -> Tensor:
    """Inverse of :func:`pack_mask`: ``(*lead, nbytes)`` uint8 -> ``(*lead, n)`` bool.

    Raises:
        ValueError: if a row lacks its terminator bit or rows disagree on their length.
    """
    if not isinstance(packed, Tensor) or packed.dtype != torch.uint8 or packed.dim() == 0:
        raise TypeError("packed must be a uint8 tensor of at least one dimension, got "
                        f"{getattr(packed, 'dtype', type(packed))}")
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(-1) >> shifts) & 1  # (*lead, nbytes, 8)
    bits = bits.reshape(*packed.shape[:-1], -1)  # (*lead, nbytes * 8)
    if bits.numel() == 0:
        raise ValueError("packed mask is empty (no terminator)")
    # The terminator is the last 1 bit of each row.
    idx = torch.arange(bits.shape[-1], device=packed.device)
    last_one = torch.where(bits.bool(), idx, -1).amax(-1)  # (*lead,)
    lengths = last_one.unique()
    if lengths.numel() != 1 or int(lengths[0]) < 0 or int(lengths[0]) >= 8 * packed.shape[-1] \
            or int(lengths[0]) // 8 + 1 != packed.shape[-1]:
        raise ValueError("packed mask is corrupt: rows lack a consistent terminator bit")
    return bits[..., : int(lengths[0])].bool()


# --------------------------------------------------------------------------- hooks


class _GradMask:
    """Tensor hook: zero the gradient of pruned entries (looks the mask up at call time)."""

    def __init__(self, module: nn.Module, name: str) -> None:
        self.module = weakref.ref(module)
        self.name = name

    def __call__(self, grad: Tensor) -> Tensor:
        module = self.module()
        mask = None if module is None else module._buffers.get(self.name + MASK_SUFFIX)
        if mask is None:
            return grad
        return grad.masked_fill(~mask, 0)


# Pruned parameters, by id: (param ref, module ref, name). A process-wide optimizer step
# post-hook (registered at the first pruning) re-zeroes their pruned entries after every
# ``optimizer.step()``, so stale optimizer state (momentum, Adam moments from before pruning)
# cannot move them either.
_TRACKED: dict[int, tuple[weakref.ref[Tensor], weakref.ref[nn.Module], str]] = {}
_STEP_HOOK: list[Any] = []


def _after_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    if not _TRACKED:
        return
    for group in optimizer.param_groups:
        for p in group["params"]:
            entry = _TRACKED.get(id(p))
            if entry is None or entry[0]() is not p:
                continue
            module = entry[1]()
            mask = None if module is None else module._buffers.get(entry[2] + MASK_SUFFIX)
            if mask is not None:
                with torch.no_grad():
                    p.masked_fill_(~mask, 0)  # type: ignore[union-attr]


def _track(param: Tensor, module: nn.Module, name: str) -> None:
    entry = _TRACKED.get(id(param))
    if entry is not None and entry[0]() is param and entry[1]() is module:
        return
    for key in [k for k, v in _TRACKED.items() if v[0]() is None or v[1]() is None]:
        del _TRACKED[key]  # forget collected parameters
    _TRACKED[id(param)] = (weakref.ref(param), weakref.ref(module), name)
    if not _STEP_HOOK:
        _STEP_HOOK.append(register_optimizer_step_post_hook(_after_step))


def _grad_hooked(param: Tensor) -> bool:
    hooks = getattr(param, "_backward_hooks", None) or {}
    return any(isinstance(h, _GradMask) for h in hooks.values())


class _ForwardPreHook:
    """Zero pruned entries before the forward; (re-)attach the gradient hook if missing."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, module: nn.Module, inputs: Any) -> None:
        param = module._parameters[self.name]
        mask = module._buffers[self.name + MASK_SUFFIX]
        if param is None or mask is None:
            return
        # ``.data`` keeps autograd's version counter: a graph built on the (already zero)
        # entries in an earlier forward stays valid for gradient accumulation.
        param.data.masked_fill_(~mask, 0)
        if param.requires_grad and not _grad_hooked(param):
            param.register_hook(_GradMask(module, self.name))
            _track(param, module, self.name)


class _StateDictHook:
    """Store ``name`` compactly (kept values + packed mask) or dense without the mask."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, module: nn.Module, state_dict: dict[str, Any], prefix: str,
                 local_metadata: Any) -> None:
        key, mkey = prefix + self.name, prefix + self.name + MASK_SUFFIX
        if key not in state_dict or mkey not in state_dict:
            return
        value = state_dict[key].detach()
        mask = state_dict[mkey]
        packed = pack_mask(mask)
        # torch.save spends about 250-320 bytes on each extra entry (zip header, alignment)
        compact = int(mask.sum()) * value.element_size() + packed.numel() + _ENTRY_BYTES
        dense = value.numel() * value.element_size()
        derivable = bool(torch.equal(value != 0, mask))
        if derivable and dense <= compact:
            del state_dict[mkey]
            state_dict[key] = value.masked_fill(~mask, 0)
        else:
            state_dict[key] = value[mask]
            state_dict[mkey] = packed


class _LoadStateDictPreHook:
    """Accept every stored form: compact, dense without mask, dense with a bool mask."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, module: nn.Module, state_dict: dict[str, Any], prefix: str,
                 local_metadata: Any, strict: bool, missing_keys: list[str],
                 unexpected_keys: list[str], error_msgs: list[str]) -> None:
        key, mkey = prefix + self.name, prefix + self.name + MASK_SUFFIX
        if key not in state_dict:
            return
        value = state_dict[key]
        shape = module._parameters[self.name].shape  # type: ignore[union-attr]
        mask = state_dict.get(mkey)
        if mask is None:
            if tuple(value.shape) == tuple(shape):
                state_dict[mkey] = value != 0
            return
        if mask.dtype == torch.uint8:
            try:
                mask = unpack_mask(mask).reshape(shape)
            except (ValueError, RuntimeError) as e:
                error_msgs.append(f"{mkey}: cannot unpack the mask for shape {tuple(shape)}: {e}")
                return
            state_dict[mkey] = mask
        if tuple(value.shape) != tuple(shape):  # compact: the kept values only
            if value.dim() != 1 or value.numel() != int(mask.sum()):
                error_msgs.append(f"{key}: {tuple(value.shape)} stored values for "
                                  f"{int(mask.sum())} kept positions of shape {tuple(shape)}")
                return
            dense = torch.zeros(shape, dtype=value.dtype, device=value.device)
            dense[mask.to(value.device)] = value
            state_dict[key] = dense


def _hooks_of(module: nn.Module, name: str) -> list[tuple[dict[int, Any], int]]:
    found = []
    for hooks in (module._forward_pre_hooks, module._state_dict_hooks,
                  module._load_state_dict_pre_hooks):
        for hid, h in hooks.items():
            target = getattr(h, "hook", h)  # load pre-hooks are wrapped
            if isinstance(target, _ForwardPreHook | _StateDictHook | _LoadStateDictPreHook) \
                    and target.name == name:
                found.append((hooks, hid))
    return found


# --------------------------------------------------------------------------- reparametrisation


def _check_target(module: nn.Module, name: str) -> nn.Parameter:
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    param = module._parameters.get(name) if isinstance(name, str) else None
    if param is None:
        names = [n for n, p in module._parameters.items() if p is not None]
        raise ValueError(f"{type(module).__name__} has no parameter {name!r}; parameters: {names}")
    return param


def is_pruned(module: nn.Module, name: str = "weight") -> bool:
    """Whether ``module.<name>`` carries a pruning mask."""
    return isinstance(module._buffers.get(name + MASK_SUFFIX), Tensor)


def get_mask(module: nn.Module, name: str = "weight") -> Tensor:
    """The bool mask of ``module.<name>`` (all True if it is not pruned)."""
    param = _check_target(module, name)
    mask = module._buffers.get(name + MASK_SUFFIX)
    return mask if mask is not None else torch.ones_like(param, dtype=torch.bool)


def apply_mask(module: nn.Module, name: str, mask: Tensor) -> nn.Module:
    """Prune ``module.<name>`` with a bool ``mask`` (True = kept), ANDed into any earlier mask.

    The parameter object is kept (optimizers keep working); its pruned entries are set to zero.

    Args:
        module: the module holding the parameter.
        name: the parameter's name (``"weight"``, ``"bias"``, ...).
        mask: bool tensor of the parameter's shape.

    Returns:
        ``module``.

    Example:
        >>> lin = nn.Linear(3, 2)
        >>> _ = apply_mask(lin, "weight", torch.tensor([[True, False, True], [False] * 3]))
        >>> int((lin.weight != 0).sum()), lin.weight_mask.dtype
        (2, torch.bool)
    """
    param = _check_target(module, name)
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {getattr(mask, 'dtype', type(mask))}")
    if mask.shape != param.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != {name} shape {tuple(param.shape)}")
    mask = mask.to(param.device)
    if is_pruned(module, name):
        module._buffers[name + MASK_SUFFIX].logical_and_(mask)  # type: ignore[union-attr]
    else:
        if hasattr(module, name + MASK_SUFFIX):
            raise ValueError(f"{type(module).__name__} already has an attribute "
                             f"{name + MASK_SUFFIX!r}")
        module.register_buffer(name + MASK_SUFFIX, mask.clone())
        module.register_forward_pre_hook(_ForwardPreHook(name))
        module.register_state_dict_post_hook(_StateDictHook(name))
        module.register_load_state_dict_pre_hook(_LoadStateDictPreHook(name))
        if param.requires_grad:
            param.register_hook(_GradMask(module, name))
    _track(param, module, name)
    with torch.no_grad():
        param.masked_fill_(~module._buffers[name + MASK_SUFFIX], 0)  # type: ignore[operator]
    return module


def identity(module: nn.Module, name: str = "weight") -> nn.Module:
    """Attach an all-True mask (prune nothing), e.g. before loading a pruned checkpoint."""
    return apply_mask(module, name, torch.ones_like(_check_target(module, name), dtype=torch.bool))


def remove(module: nn.Module, name: str = "weight") -> nn.Module:
    """Make the pruning of ``module.<name>`` permanent: zeros stay, mask and hooks go."""
    param = _check_target(module, name)
    if not is_pruned(module, name):
        raise ValueError(f"{type(module).__name__}.{name} is not pruned")
    mask = module._buffers.pop(name + MASK_SUFFIX)
    with torch.no_grad():
        param.masked_fill_(~mask, 0)  # type: ignore[operator]
    for hooks, hid in _hooks_of(module, name):
        del hooks[hid]
    grad_hooks = getattr(param, "_backward_hooks", None) or {}
    for hid in [k for k, h in grad_hooks.items() if isinstance(h, _GradMask)]:
        del grad_hooks[hid]
    _TRACKED.pop(id(param), None)
    return module


def pruned_tensors(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """``(module_name, module, param_name)`` for every pruned tensor in ``model``."""
    out = []
    for mname, m in model.named_modules():
        for bname, b in m._buffers.items():
            if b is not None and bname.endswith(MASK_SUFFIX) and \
                    m._parameters.get(bname[: -len(MASK_SUFFIX)]) is not None:
                out.append((mname, m, bname[: -len(MASK_SUFFIX)]))
    return out


def remove_all(model: nn.Module) -> nn.Module:
    """:func:`remove` every pruned tensor in ``model``."""
    for _, m, name in pruned_tensors(model):
        remove(m, name)
    return model


def dense_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A plain state dict from a pruned model's: masks applied and dropped, values dense.

    Loads strictly into the same architecture without pruning (or after :func:`remove`).
    """
    out = dict(state_dict)
    for mkey in [k for k in state_dict if k.endswith(MASK_SUFFIX)]:
        key = mkey[: -len(MASK_SUFFIX)]
        if key not in out:
            continue
        mask, value = out.pop(mkey), out[key]
        if mask.dtype == torch.uint8:
            mask = unpack_mask(mask)
        elif mask.dtype != torch.bool:
            out[mkey] = mask  # not ours
            continue
        if value.shape == mask.shape:
            out[key] = value.masked_fill(~mask, 0)
        elif value.numel() == int(mask.sum()):
            dense = torch.zeros(mask.shape, dtype=value.dtype)
            dense[mask] = value
            out[key] = dense
        else:
            raise ValueError(f"{key}: {value.numel()} values do not fit its mask "
                             f"({int(mask.sum())} kept)")
    return out


def load_pruned_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor],
                           strict: bool = True) -> Any:
    """Attach masks where ``state_dict`` has them, then ``model.load_state_dict``.

    For a freshly built model and a checkpoint saved from a pruned one.
    """
    modules = dict(model.named_modules())
    for key in state_dict:
        if not key.endswith(MASK_SUFFIX):
            continue
        mname, _, pname = key[: -len(MASK_SUFFIX)].rpartition(".")
        m = modules.get(mname)
        if m is not None and m._parameters.get(pname) is not None and not is_pruned(m, pname):
            identity(m, pname)
    return model.load_state_dict(state_dict, strict=strict)


# --------------------------------------------------------------------------- mask rules


def _check_amount(amount: float) -> float:
    if isinstance(amount, bool) or not isinstance(amount, int | float) or not 0 <= amount <= 1:
        raise ValueError(f"amount must be a fraction in [0, 1], got {amount!r}")
    return float(amount)


def topk_mask(importance: Tensor, amount: float, mask: Tensor | None = None) -> Tensor:
    """Keep all but the ``round(amount * numel)`` least important entries.

    Already pruned entries (``mask`` False) count as least important, so masks only shrink.
    Ties are broken by position: among equal importances the earlier (row-major) entry is pruned
    first.

    Args:
        importance: any-shape floating tensor (e.g. ``|w|``).
        amount: fraction of all entries pruned afterwards (the target sparsity), in [0, 1].
        mask: the current mask (None: nothing pruned yet).

    Shape:
        Output: ``importance.shape``, bool.
    """
    amount = _check_amount(amount)
    flat = importance.detach().reshape(-1).float()  # (N,)
    if mask is not None:
        flat = flat.masked_fill(~mask.reshape(-1), -math.inf)
    k = round(amount * flat.numel())
    keep = torch.ones_like(flat, dtype=torch.bool)
    if k > 0:
        order = torch.sort(flat, stable=True).indices
        keep[order[:k]] = False
    return keep.reshape(importance.shape)


def threshold_mask(importance: Tensor, threshold: float) -> Tensor:
    """Keep entries with ``importance >= threshold`` (prune strictly below)."""
    if not isinstance(threshold, int | float) or isinstance(threshold, bool) or threshold < 0 \
            or not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}")
    return importance.detach() >= threshold


def _effective(module: nn.Module, name: str) -> Tensor:
    param = _check_target(module, name)
    return param.detach() * get_mask(module, name) if is_pruned(module, name) else param.detach()


def magnitude_prune(
    module: nn.Module,
    name: str = "weight",
    *,
    amount: float | None = None,
    threshold: float | None = None,
    quality: float | None = None,
) -> nn.Module:
    """Prune one tensor by magnitude; give exactly one of ``amount``, ``threshold``, ``quality``.

    Args:
        amount: target fraction of the tensor's entries pruned (its sparsity afterwards).
        threshold: prune ``|w| < threshold``.
        quality: Han et al. (2015): threshold = ``quality`` x the standard deviation of the
            layer's kept weights.

    Example:
        >>> lin = nn.Linear(10, 10)
        >>> _ = magnitude_prune(lin, amount=0.5)
        >>> float((lin.weight == 0).float().mean())
        0.5
    """
    given = [x is not None for x in (amount, threshold, quality)]
    if sum(given) != 1:
        raise ValueError("give exactly one of amount=, threshold=, quality=")
    w = _effective(module, name)
    mask = get_mask(module, name)
    if amount is not None:
        new = topk_mask(w.abs(), amount, mask)
    elif threshold is not None:
        new = threshold_mask(w.abs(), threshold)
    else:
        if isinstance(quality, bool) or not isinstance(quality, int | float) or quality < 0:
            raise ValueError(f"quality must be a number >= 0, got {quality!r}")
        kept = w[mask]
        std = float(kept.std()) if kept.numel() > 1 else 0.0
        new = threshold_mask(w.abs(), float(quality) * std)
    return apply_mask(module, name, new)


Target = tuple[nn.Module, str]


def _targets(model_or_targets: nn.Module | Iterable[Target]) -> list[Target]:
    if isinstance(model_or_targets, nn.Module):
        return [(m, "weight") for m in model_or_targets.modules()
                if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d)]
    targets = list(model_or_targets)
    for t in targets:
        if not (isinstance(t, tuple) and len(t) == 2 and isinstance(t[0], nn.Module)
                and isinstance(t[1], str)):
            raise TypeError(f"targets must be (module, param_name) pairs, got {t!r}")
        _check_target(*t)
    return targets


def global_prune(targets: nn.Module | Iterable[Target], importance: Sequence[Tensor] | None,
                 amount: float) -> list[Target]:
    """Prune ``amount`` of all entries of ``targets`` together, by one importance ranking.

    Args:
        targets: ``(module, name)`` pairs, or a model (all Linear/Conv weights).
        importance: one tensor per target (None: ``|w|``).
        amount: fraction of the entries of all targets pruned afterwards.
    """
    tlist = _targets(targets)
    if not tlist:
        raise ValueError("no tensors to prune")
    if importance is None:
        importance = [_effective(m, n).abs() for m, n in tlist]
    if len(importance) != len(tlist):
        raise ValueError(f"{len(importance)} importance tensors for {len(tlist)} targets")
    flat = torch.cat([imp.detach().reshape(-1).float().cpu() for imp in importance])  # (N,)
    masks = torch.cat([get_mask(m, n).reshape(-1).cpu() for m, n in tlist])  # (N,)
    keep = topk_mask(flat, amount, masks)
    start = 0
    for (m, n), imp in zip(tlist, importance):
        size = imp.numel()
        apply_mask(m, n, keep[start : start + size].reshape(imp.shape))
        start += size
    return tlist


def global_magnitude_prune(targets: nn.Module | Iterable[Target], amount: float) -> list[Target]:
    """Global magnitude pruning: one ``|w|`` threshold across all ``targets`` (see
    :func:`global_prune`)."""
    return global_prune(targets, None, amount)


def structured_prune(module: nn.Module, name: str = "weight", *, amount: float, dim: int = 0,
                     p: float = 2.0, prune_bias: bool = True) -> nn.Module:
    """Prune whole slices along ``dim`` by their L``p`` norm (rows of a Linear, filters of a conv
    for ``dim=0``; input columns/channels for ``dim=1``).

    ``amount`` is the fraction of slices pruned afterwards. With ``dim=0`` and ``prune_bias``
    the bias entries of pruned units are pruned too, so a pruned unit outputs exactly zero
    before its activation and :func:`shrink` can drop it.
    """
    w = _effective(module, name)
    if not -w.dim() <= dim < w.dim():
        raise ValueError(f"dim must be in [{-w.dim()}, {w.dim()}), got {dim}")
    dim = dim % w.dim()
    moved = w.movedim(dim, 0).reshape(w.shape[dim], -1)  # (U, rest)
    norms = moved.norm(p=p, dim=1)  # (U,)
    alive = get_mask(module, name).movedim(dim, 0).reshape(w.shape[dim], -1).any(1)  # (U,)
    keep_units = topk_mask(norms, amount, alive)
    shape = [1] * w.dim()
    shape[dim] = -1
    apply_mask(module, name, keep_units.reshape(shape).expand(w.shape).contiguous())
    bias = module._parameters.get("bias")
    if dim == 0 and prune_bias and name == "weight" and bias is not None:
        apply_mask(module, "bias", keep_units.to(bias.device))
    return module


# --------------------------------------------------------------------------- shrink

_PASS = (nn.Dropout, nn.Identity)
_ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.ELU, nn.SiLU,
                nn.Softplus, nn.Hardtanh)
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
          nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _padded(conv: nn.Module) -> bool:
    pad = getattr(conv, "padding", 0)
    return pad == "same" or any(x != 0 for x in (pad if isinstance(pad, tuple) else (pad,)))


@torch.no_grad()
def shrink(model: nn.Sequential) -> nn.Sequential:
    """A smaller copy of ``model`` with dead units removed and the next layer rewired.

    A unit (row of a Linear, filter of a conv) is dead when all its weights are zero: its output
    is its bias everywhere, and after the modules in between (elementwise activations,
    BatchNorm, max/adaptive pooling, Dropout, Flatten) still a constant per unit, which is
    folded into the next layer's bias. That is exact for a next Linear, and for a next conv
    without padding; :func:`structured_prune` prunes the biases of pruned units too, so their
    constant is ``f(0)``, which is 0 for ReLU-like activations and needs no folding at all.
    The copy has identical outputs and no pruning masks (:func:`remove` is applied to it).

    Args:
        model: an ``nn.Sequential`` of Linear/Conv layers and the modules above; in eval mode if
            it holds BatchNorm (the constants use the running statistics).

    Raises:
        ValueError: on a module between two layers that shrink cannot see through, or when a
            non-zero constant would have to pass a padded convolution.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> _ = structured_prune(net[0], amount=0.5)
        >>> shrink(net)[0].out_features
        4
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"shrink needs an nn.Sequential, got {type(model).__name__}")
    if model.training and any(isinstance(m, _NORMS) for m in model):
        raise ValueError("shrink a model holding BatchNorm in eval mode (call model.eval())")
    new = copy.deepcopy(model)
    remove_all(new)
    mods: list[Any] = list(new)
    layer_idx = [i for i, m in enumerate(mods) if isinstance(m, _LAYERS)]
    for a, b in zip(layer_idx, layer_idx[1:]):
        first, second = mods[a], mods[b]
        w = first.weight
        alive = w.reshape(w.shape[0], -1).ne(0).any(1)  # (U,)
        units = alive.numel()
        if bool(alive.all()) or not bool(alive.any()):
            continue  # nothing to drop (a layer with every unit dead is left as it is)
        const = first.bias.clone() if first.bias is not None else w.new_zeros(units)  # (U,)
        for mid in mods[a + 1 : b]:
            if isinstance(mid, _NORMS):
                bn: Any = mid
                scale = 1 / torch.sqrt(bn.running_var + bn.eps)
                const = (const - bn.running_mean) * scale
                if bn.affine:
                    const = const * bn.weight + bn.bias
            elif isinstance(mid, _ELEMENTWISE):
                const = mid(const)
            elif not isinstance(mid, (*_PASS, *_POOLS, nn.Flatten)):
                raise ValueError(f"shrink cannot see through {type(mid).__name__} between "
                                 f"layers {a} and {b}")
        dead_const = torch.where(alive, torch.zeros_like(const), const)  # (U,)
        idx = alive.nonzero().squeeze(1)  # (U',)
        n_in = second.weight.shape[1]
        per = n_in // units if isinstance(second, nn.Linear) else 1
        if per * units != n_in:
            raise ValueError(f"layer {b} has {n_in} inputs, not a multiple of the {units} units "
                             f"of layer {a}")
        wsec = second.weight.reshape(second.weight.shape[0], units, -1)  # (O, U, P)
        if bool(dead_const.ne(0).any()):
            if not isinstance(second, nn.Linear) and _padded(second):
                raise ValueError(f"dead units of layer {a} output non-zero constants that the "
                                 f"padded convolution at {b} cannot absorb")
            if second.bias is None:
                raise ValueError(f"layer {b} has no bias to absorb dead units' constants")
            second.bias += (wsec * dead_const[None, :, None]).sum((1, 2))
        if isinstance(second, nn.Linear):
            cols = wsec[:, idx].reshape(second.out_features, -1)  # (O, U' * P)
            second.in_features = cols.shape[1]
        else:
            cols = second.weight[:, idx]  # (O, U', *k)
            second.in_channels = idx.numel()
        second.weight = nn.Parameter(cols.contiguous())
        first.weight = nn.Parameter(w[idx].contiguous())
        if first.bias is not None:
            first.bias = nn.Parameter(first.bias[idx].contiguous())
        if isinstance(first, nn.Linear):
            first.out_features = idx.numel()
        else:
            first.out_channels = idx.numel()
        for mid in mods[a + 1 : b]:
            if isinstance(mid, _NORMS):
                norm: Any = mid
                norm.num_features = idx.numel()
                if norm.affine:
                    norm.weight = nn.Parameter(norm.weight[idx].contiguous())
                    norm.bias = nn.Parameter(norm.bias[idx].contiguous())
                norm.running_mean = norm.running_mean[idx].contiguous()
                norm.running_var = norm.running_var[idx].contiguous()
    return new


# --------------------------------------------------------------------------- schedules


def cubic_sparsity(step: int, final_sparsity: float, begin_step: int, end_step: int,
                   initial_sparsity: float = 0.0) -> float:
    """Zhu & Gupta (2017): ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))^3``.

    0 before ``begin_step`` (nothing pruned yet), ``s_i`` at ``begin_step``, rising fast then
    slowly, ``s_f`` from ``end_step`` on.

    Example:
        >>> cubic_sparsity(50, 0.9, 0, 100)
        0.7875
    """
    _check_amount(final_sparsity)
    _check_amount(initial_sparsity)
    if not 0 <= begin_step < end_step:
        raise ValueError(f"need 0 <= begin_step < end_step, got {begin_step}, {end_step}")
    if step < begin_step:
        return 0.0
    frac = min(1.0, (step - begin_step) / (end_step - begin_step))
    return final_sparsity + (initial_sparsity - final_sparsity) * (1 - frac) ** 3


class GradualPruning:
    """A :func:`hypersparse.train.fit` callback: prune to the cubic schedule every ``frequency``
    steps (iterative prune -> retrain in one loop).

    Stateless apart from the masks (buffers), so a resumed run continues the schedule exactly;
    masks are attached at construction (all True) so checkpoints load into a fresh model after
    constructing the same callback.

    Args:
        targets: ``(module, name)`` pairs, or a model (all its Linear/Conv weights).
        final_sparsity, begin_step, end_step, initial_sparsity: see :func:`cubic_sparsity`.
        frequency: prune every this many steps (and at ``end_step``).
        scope: ``"layer"`` (each tensor to the schedule's sparsity) or ``"global"`` (one
            magnitude ranking over all targets).
        importance: optional ``importance(module, name) -> Tensor`` (default ``|w|``), e.g. an
            OBD saliency.
    """

    def __init__(self, targets: nn.Module | Iterable[Target], *, final_sparsity: float,
                 begin_step: int, end_step: int, frequency: int = 100,
                 initial_sparsity: float = 0.0, scope: Literal["layer", "global"] = "layer",
                 importance: Callable[[nn.Module, str], Tensor] | None = None) -> None:
        cubic_sparsity(begin_step, final_sparsity, begin_step, end_step, initial_sparsity)
        if frequency < 1:
            raise ValueError(f"frequency must be >= 1, got {frequency}")
        if scope not in ("layer", "global"):
            raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
        self.targets = _targets(targets)
        self.final_sparsity, self.initial_sparsity = final_sparsity, initial_sparsity
        self.begin_step, self.end_step, self.frequency = begin_step, end_step, frequency
        self.scope, self.importance = scope, importance
        for m, n in self.targets:
            if not is_pruned(m, n):
                identity(m, n)

    def sparsity_at(self, step: int) -> float:
        return cubic_sparsity(step, self.final_sparsity, self.begin_step, self.end_step,
                              self.initial_sparsity)

    def __call__(self, step: int, model: nn.Module | None = None,
                 metrics: Mapping[str, float] | None = None) -> bool:
        due = step >= self.begin_step and (
            (step - self.begin_step) % self.frequency == 0 or step == self.end_step)
        if not due or step > self.end_step:
            return False
        s = self.sparsity_at(step)
        imp = self.importance or (lambda m, n: _effective(m, n).abs())
        if self.scope == "global":
            global_prune(self.targets, [imp(m, n) for m, n in self.targets], s)
        else:
            for m, n in self.targets:
                apply_mask(m, n, topk_mask(imp(m, n), s, get_mask(m, n)))
        return False


def sparsity(model: nn.Module | Iterable[Target]) -> float:
    """Fraction of zero entries over the targets' effective tensors (all Linear/Conv weights of
    a model)."""
    tlist = _targets(model)
    total = sum(_check_target(m, n).numel() for m, n in tlist)
    zeros = sum(int((_effective(m, n) == 0).sum()) for m, n in tlist)
    return zeros / total if total else 0.0

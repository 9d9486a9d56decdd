"""hypersparse.coding: sparse coding (ISTA/FISTA, dictionary learning, LISTA) and the deep
sparse coding feature pipeline (patches -> codes -> local max pooling -> contrastive reduction).
"""

from .contrastive import ContrastiveLoss, ContrastiveProjection, contrastive_loss
from .dictionary import (
    DictionaryResult,
    OnlineDictionaryLearner,
    init_dictionary,
    learn_dictionary,
    normalize_atoms,
    resample_atoms,
    update_dictionary,
)
from .ista import (
    SparseCode,
    fista,
    ista,
    lasso_duality_gap,
    lasso_objective,
    lipschitz_constant,
    soft_threshold,
    sparse_encode,
)
from .lista import LISTA, fista_momentum, lista_loss
from .pipeline import SparseCodingLayer, extract_patches, local_max_pool, spatial_pairs

__all__ = [
    "ContrastiveLoss",
    "ContrastiveProjection",
    "contrastive_loss",
    "DictionaryResult",
    "OnlineDictionaryLearner",
    "init_dictionary",
    "learn_dictionary",
    "normalize_atoms",
    "resample_atoms",
    "update_dictionary",
    "SparseCode",
    "fista",
    "ista",
    "lasso_duality_gap",
    "lasso_objective",
    "lipschitz_constant",
    "soft_threshold",
    "sparse_encode",
    "LISTA",
    "lista_loss",
    "fista_momentum",
    "SparseCodingLayer",
    "extract_patches",
    "local_max_pool",
    "spatial_pairs",
]

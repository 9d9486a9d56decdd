"""hypersparse.coding."""

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
    lasso_objective,
    lipschitz_constant,
    soft_threshold,
    sparse_encode,
)
from .lista import LISTA, lista_loss
from .pipeline import SparseCodingLayer, extract_patches, local_max_pool, spatial_pairs

"""hypersparse.compress."""
from .obd import hessian_diagonal, obd_prune, obd_saliency
from .prune import GradualPruning, apply_mask, cubic_sparsity, dense_state_dict, get_mask
from .prune import global_magnitude_prune, global_prune, identity, is_pruned, load_pruned_state_dict
from .prune import magnitude_prune, pack_mask, pruned_tensors, remove, remove_all, shrink
from .prune import sparsity, structured_prune, threshold_mask, topk_mask, unpack_mask
from .regularize import SparsityRegularizer, activation_penalty, group_lasso_penalty
from .regularize import l1_penalty, l2_penalty
from .report import LayerSparsity, format_report, sparsity_report, write_report
from .fileformat import CompressionSummary, CorruptFileError, compress_model, compress_state_dict
from .fileformat import decode_state_dict, decompress, encode_state_dict, load_compressed
from .huffman import HuffmanError, canonical_codes, code_lengths, huffman_decode, huffman_encode
from .relindex import relative_indices, relative_positions
# ruff: noqa: F401, I001

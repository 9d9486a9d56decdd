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

from .cluster import SharedWeights as SharedWeights
from .cluster import SharingLayerReport as SharingLayerReport
from .cluster import base_type as base_type
from .cluster import bias_of as bias_of
from .cluster import export_shared as export_shared
from .cluster import index_dtype as index_dtype
from .cluster import kmeans1d as kmeans1d
from .cluster import safe_deepcopy as safe_deepcopy
from .cluster import share_weights as share_weights
from .cluster import shared_weight as shared_weight
from .cluster import sharing_report as sharing_report
from .cluster import weight_of as weight_of
from .lowrank import LowRankLayerReport as LowRankLayerReport
from .lowrank import choose_rank as choose_rank
from .lowrank import low_rank as low_rank
from .lowrank import low_rank_model as low_rank_model
from .quantize import FakeQuantize as FakeQuantize
from .quantize import QuantLayerReport as QuantLayerReport
from .quantize import dequantize as dequantize
from .quantize import fake_quantize as fake_quantize
from .quantize import freeze_quantized as freeze_quantized
from .quantize import quantization_report as quantization_report
from .quantize import quantize_model as quantize_model
from .quantize import quantize_params as quantize_params
from .quantize import quantize_tensor as quantize_tensor

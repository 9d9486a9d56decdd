"""hypersparse.compress."""
from .cluster import SharedWeights, SharingLayerReport, export_shared, index_dtype, kmeans1d
from .cluster import share_weights, shared_weight, sharing_report
from .lowrank import LowRankLayerReport, choose_rank, low_rank, low_rank_model
from .quantize import FakeQuantize, QuantLayerReport, dequantize, fake_quantize, freeze_quantized
from .quantize import quantization_report, quantize_model, quantize_params, quantize_tensor

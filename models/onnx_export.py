"""Export scikit-learn RUL regressors to one ONNX graph, and check it against scikit-learn.

The graph has one float input ``features`` ``(N, F)`` and outputs ``rul`` and, when quantile
models are given, ``rul_lower`` and ``rul_upper``; the :class:`~models.rul.ModelMetadata`
travels in ``metadata_props``.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType

from models.rul import ModelMetadata

INPUT_NAME = "features"


def as_float32_grid(x: np.ndarray) -> np.ndarray:
    """Round features to float32 values (kept as float64): the values ONNX will see."""
    return np.asarray(x, dtype=np.float32).astype(np.float64)


def snap_thresholds(estimator: object) -> None:
    """Move every split threshold of a fitted HistGradientBoosting model down to the largest
    float32 value not above it. For float32-representable inputs ``x <= t`` is then the same
    test in float64 (scikit-learn) and in float32 (ONNX's TreeEnsemble), so both take the
    same branch and the parity gate can be tight."""
    for iteration in getattr(estimator, "_predictors", []):
        for predictor in iteration:
            t = predictor.nodes["num_threshold"]
            t32 = t.astype(np.float32)
            too_high = t32.astype(np.float64) > t
            t32[too_high] = np.nextafter(t32[too_high], np.float32(-np.inf))
            predictor.nodes["num_threshold"] = t32.astype(np.float64)


def export_onnx(estimators: dict[str, object], n_features: int, meta: ModelMetadata) -> bytes:
    """Convert ``{"rul": est, "rul_lower": est, "rul_upper": est}`` into one ONNX model."""
    if "rul" not in estimators:
        raise ValueError("estimators must include 'rul'")
    initial = [(INPUT_NAME, FloatTensorType([None, n_features]))]
    nodes, inits, outputs = [], [], []
    opsets: dict[str, int] = {}
    for out_name, est in estimators.items():
        part = to_onnx(est, initial_types=initial, target_opset={"": 17, "ai.onnx.ml": 3})
        part = onnx.compose.add_prefix(part, prefix=f"{out_name}/", rename_inputs=False)
        nodes.extend(part.graph.node)
        inits.extend(part.graph.initializer)
        nodes.append(helper.make_node("Identity", [part.graph.output[0].name], [out_name]))
        elem = part.graph.output[0].type.tensor_type.elem_type
        outputs.append(helper.make_tensor_value_info(out_name, elem, [None, 1]))
        for op in part.opset_import:
            opsets[op.domain] = max(opsets.get(op.domain, 0), op.version)
    graph = helper.make_graph(
        nodes,
        "rul_model",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [None, n_features])],
        outputs,
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()]
    )
    model.ir_version = min(model.ir_version, 9)
    onnx.helper.set_model_props(model, meta.to_props())
    onnx.checker.check_model(model)
    return model.SerializeToString()


def parity(onnx_bytes: bytes, estimators: dict[str, object], x: np.ndarray) -> float:
    """Largest absolute difference between ONNX and scikit-learn outputs on ``x``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got = sess.run(None, {INPUT_NAME: np.asarray(x, dtype=np.float32)})
    names = [o.name for o in sess.get_outputs()]
    worst = 0.0
    for name, values in zip(names, got, strict=True):
        ref = estimators[name].predict(as_float32_grid(x))  # type: ignore[attr-defined]
        worst = max(worst, float(np.max(np.abs(values.reshape(-1) - ref))))
    return worst

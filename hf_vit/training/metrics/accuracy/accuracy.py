"""Top-1 accuracy as an `evaluate` metric module that loads by path (`evaluate.load(folder)`), offline."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
The fraction of examples whose predicted class equals the reference class.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class ids.
    references (`list` of `int`): true class ids.
    sample_weight (`list` of `float`, optional): per-example weights; by default every example counts once.
Returns:
    accuracy (`float`): in [0, 1].
Example:
    >>> metric = evaluate.load("path/to/hf_vit/training/metrics/accuracy")
    >>> metric.compute(predictions=[0, 1, 2, 2], references=[0, 1, 1, 2])
    {'accuracy': 0.75}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, sample_weight=None) -> dict[str, float]:
        predictions, references = np.asarray(predictions), np.asarray(references)
        if predictions.size == 0:
            raise ValueError("accuracy of no examples is undefined: predictions and references are empty.")
        hits = (predictions == references).astype(np.float64)
        weights = np.ones_like(hits) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        return {"accuracy": float((hits * weights).sum() / weights.sum())}
